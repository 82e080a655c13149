"""Data-prep throughput: 3-s mixtures per second on the real corpus, with 1 and 2 worker processes.

    python bench/bench_data_prep.py [--corpus ../shared/corpus] [--mixtures 300] [--workers 1 2]

Each run mixes into a fresh temporary folder and is timed end to end (source scan, process start,
mixing, writing, manifest). Skips with a message when the corpus is absent. Target: >= 150
mixtures/s with 2 workers on a 2-core machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: E402
from data import data_prep  # noqa: E402

CORPUS = Path(os.environ.get("SE_CORPUS", ROOT.parent / "shared" / "corpus"))
SPLITS = {"clean_train_path": "clean_train", "noise_train_path": "noise_train",
          "clean_test_path": "clean_test", "noise_test_path": "noise_test"}  # fmt: skip


def bench(corpus: Path, mixtures: int, workers: int, seconds: float) -> float:
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as out:
        overrides = [f"data.{k}={corpus / v}" for k, v in SPLITS.items()] + [
            f"data.output_path={out}",
            f"data.file_length={seconds:g}",
            f"data.total_training_files={mixtures}",
        ]
        cfg = utils.load_config(utils.DATA_CONFIG, overrides)
        started = time.perf_counter()
        (stats,) = data_prep.prepare(cfg, ("training",), workers=workers, progress=False)
        elapsed = time.perf_counter() - started
        assert stats.written == mixtures
    return mixtures / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--mixtures", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=3.0, help="mixture length")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    if not all((args.corpus / v).is_dir() for v in SPLITS.values()):
        print(f"skipped: corpus not found at {args.corpus} (set SE_CORPUS or --corpus)")
        return 0
    data_prep.log.setLevel(logging.ERROR)  # the corpus's too-short files are expected, not news
    what = f"{args.mixtures} mixtures of {args.seconds:g} s"
    print(f"data_prep: {what} from {args.corpus} ({os.cpu_count()} CPUs)")
    for workers in args.workers:
        rate = bench(args.corpus, args.mixtures, workers, args.seconds)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"  workers={workers}: {rate:7.1f} mixtures/s   (1-min load average {load:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
