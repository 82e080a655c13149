"""Stage 1: mixes clean speech with noise into the training and testing mixtures.

For every output n = 1..total_<split>_files (settings: data/config.ini, section [data]):
  * an SNR drawn from numpy.linspace(SNR_lower, SNR_upper, total_snrlevels);
  * a clean segment of file_length seconds that contains speech: 20-ms frames within 40 dB of the
    segment's loudest frame must be at least half of the frames (other offsets and files are tried);
  * a noise segment of the same length (noise shorter than that is looped; silent segments rejected);
  * the noise scaled so that 10 log10(sum clean^2 / sum noise^2) equals the SNR, noisy = clean + noise,
    and one common gain on all three signals when max|noisy| would exceed 0.99.
Each mixture's random draws depend only on (seed, split, n), so the output is byte-identical for any
number of worker processes. Files are float32 WAV, so noisy == clean + noise holds exactly on disk.

Outputs, inside output_path:
  CleanSpeech_<split>/clnsp{n}.wav, Noise_<split>/noisy{n}_SNRdb_{snr}.wav,
  NoisySpeech_<split>/noisy{n}_SNRdb_{snr}_clnsp{n}.wav  (split = training | testing, snr = f"{snr:g}"),
  manifest_<split>.csv  (index, noisy, clean, noise, snr_db, clean_source, clean_start_s, noise_source,
                         noise_start_s, gain; paths relative to output_path),
  data_prep_state_<split>.json (hash of the settings and the source list), data_prep_config.ini.

Several machines: --shard I/N mixes the I-th of N contiguous blocks of each split's indices into
manifest_<split>.shard-I-of-N.csv (same wav names, same bytes); --merge-shards N then writes the
manifest and skipped list one unsharded run would have written (shards.py).

A re-run with the same settings completes missing mixtures (an interrupted run resumes); a re-run with
different settings or sources refuses unless --overwrite, which first removes that split's outputs.
Sources (.wav/.flac/.ogg, searched recursively, any rate, any channel count) are never modified;
unreadable, empty, all-zero, NaN/Inf or too-short files are skipped with a warning and listed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as `python data/data_prep.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prep_outputs  # noqa: E402
import prep_plan  # noqa: E402
import prep_run  # noqa: E402
import shards  # noqa: E402
import utils  # noqa: E402

log = utils.get_logger("data_prep")


def _skip_empty_split(out: Path, split: str, overwrite: bool) -> None:
    """A split with 0 mixtures is not mixed: its old outputs (a manifest STFT.py would cache) are
    removed with --overwrite, else named in a warning."""
    manifest = out / f"manifest_{split}.csv"
    if overwrite:
        prep_outputs.remove_outputs(out, split)
        (out / f"data_prep_skipped_{split}.csv").unlink(missing_ok=True)
    elif manifest.exists():
        log.warning(
            f"total_{split}_files = 0, but {manifest} from an earlier run is still there "
            "(STFT.py would use it); --overwrite removes it"
        )


def prepare(cfg, splits=("training", "testing"), workers: int | None = None, overwrite: bool = False,
            progress: bool = True, shard=None) -> list[prep_run.SplitStats]:  # fmt: skip
    """Mixes the given splits; every check (sources, state) runs before anything is written.
    shard (shards.Shard): only its block of each split's mixtures (see prep_run.run_split)."""
    if shard is not None and overwrite:
        raise utils.PipelineError(
            "--overwrite with --shard: shards share the output folder; remove the old outputs first "
            "(or run one unsharded --overwrite)"
        )
    settings = prep_plan.Settings.from_config(cfg, workers)
    n_workers = settings.workers or os.cpu_count() or 1
    plans = [prep_plan.plan_split(settings, s) for s in splits if settings.totals[s] > 0]
    for plan in plans:
        prep_plan.check_state(plan, overwrite)
    for split in (s for s in splits if settings.totals[s] == 0):
        _skip_empty_split(settings.output_path, split, overwrite)
    settings.output_path.mkdir(parents=True, exist_ok=True)
    cfg.set("data", "workers", str(settings.workers))
    utils.save_config(cfg, settings.output_path / "data_prep_config.ini")
    return [prep_run.run_split(plan, n_workers, progress, shard) for plan in plans]


def print_summary(stats: list[prep_run.SplitStats], out=None, shown: int = 10) -> None:
    out = out or sys.stdout
    for s in stats:
        rate = s.total / s.seconds if s.seconds > 0 else float("inf")
        print(
            f"{s.split}: {s.total} mixtures ({s.written} written, {s.resumed} already complete) in "
            f"{s.manifest.parent}, {s.seconds:.1f} s, {rate:.1f} mixtures/s; manifest {s.manifest.name}",
            file=out,
        )
        if s.skipped:
            listing = s.manifest.parent / f"data_prep_skipped_{s.split}.csv"
            print(f"{s.split}: {len(s.skipped)} source file(s) skipped (all in {listing}):", file=out)
            for path, reason in sorted(s.skipped.items())[:shown]:
                print(f"  {path}: {reason}", file=out)
            if len(s.skipped) > shown:
                print(f"  ... and {len(s.skipped) - shown} more", file=out)
        for note in s.notes[:shown]:
            print(f"  note: {note}", file=out)
        if len(s.notes) > shown:
            print(f"  ... and {len(s.notes) - shown} more notes", file=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    utils.add_config_args(parser, default=utils.DATA_CONFIG)
    parser.add_argument(
        "--split", choices=("training", "testing", "both"), default="both", help="which split(s) to mix"
    )
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: [data] workers; 0 = one per core)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs made with other settings (removes them first)",
    )
    shards.add_arguments(
        parser,
        "mix only the I-th of N contiguous blocks of each split's mixtures (one per machine); "
        "writes manifest_<split>.shard-I-of-N.csv; then --merge-shards N",
        "join the N shards' manifests (all in output_path) into manifest_<split>.csv, byte-identical "
        "to one unsharded run",
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 0:
        raise utils.PipelineError(f"--workers {args.workers}: must be >= 0")
    cfg = utils.load_config(args.config, args.overrides)
    splits = ("training", "testing") if args.split == "both" else (args.split,)
    if args.merge_shards:
        for line in shards.merge_data_prep(cfg, args.merge_shards, splits):
            print(line)
        return 0
    stats = prepare(cfg, splits, args.workers, args.overwrite, shard=args.shard)
    print_summary(stats)
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
