"""--shard I/N of data/data_prep.py, STFT.py and evaluate.py, and the merges of their N shards.

Shard I of N takes the I-th of N contiguous, near-equal blocks of the items (mixture indices 1..total,
the examples of a manifest, the test files): the N blocks are disjoint and cover every item. Each
shard writes its items' outputs under names of their own (..shard-I-of-N..), so N machines may share
one folder or copy their folders together afterwards; the merge (--merge-shards N) checks that every
shard is there and complete, and writes the files one machine would have written, byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import utils


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """ "I/N" with 1 <= I <= N."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise utils.PipelineError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/3")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def label(self) -> str:
        """The shard's part of a file name: shard-2-of-3."""
        return f"shard-{self.index}-of-{self.count}"

    def block(self, n: int) -> range:
        """Positions 0..n-1 of this shard: the index-th of `count` contiguous, near-equal blocks."""
        return range((self.index - 1) * n // self.count, self.index * n // self.count)

    def all(self) -> list[Shard]:
        return [Shard(i, self.count) for i in range(1, self.count + 1)]


def shard_arg(text: str) -> Shard:
    """argparse type for --shard."""
    import argparse

    try:
        return Shard.parse(text)
    except utils.PipelineError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def merge_arg(text: str) -> int:
    """argparse type for --merge-shards N."""
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--merge-shards {text!r}: expected a shard count >= 1")
    return int(text)


# ----------------------------------------------------------------------------- data/data_prep.py


def _read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _missing(paths) -> list:
    return [p for p in paths if not p.is_file()]


def merge_data_prep(cfg, count: int, splits=("training", "testing")) -> list[str]:
    """Joins manifest_<split>.shard-I-of-N.csv (I = 1..N) into manifest_<split>.csv and the shards'
    skipped lists into data_prep_skipped_<split>.csv, as one unsharded run writes them; the shard files
    are removed afterwards. Refuses (writing nothing) when a shard is missing or the shards' mixture
    indices are not exactly 1..total_<split>_files."""
    import csv

    from data import data_prep

    settings = data_prep.Settings.from_config(cfg)
    out, lines, done = settings.output_path, [], []
    for split in splits:
        total = settings.totals[split]
        if total == 0:
            continue
        parts = [s.label for s in Shard(1, count).all()]
        manifests = [out / f"manifest_{split}.{p}.csv" for p in parts]
        if missing := _missing(manifests):
            names = ", ".join(m.name for m in missing)
            raise utils.PipelineError(f"{out}: {split}: shard manifest(s) not there yet: {names}")
        rows = [r for m in manifests for r in _read_csv(m)]
        for r in rows:
            r["index"] = int(r["index"])
        indices = sorted(r["index"] for r in rows)
        if indices != list(range(1, total + 1)):
            raise utils.PipelineError(
                f"{out}: {split}: the {count} shards hold {len(indices)} mixtures "
                f"({len(set(indices))} distinct), not 1..{total}: were they made with other settings?"
            )
        skipped = {}
        for p in parts:
            listing = out / f"data_prep_skipped_{split}.{p}.csv"
            if listing.is_file():
                for r in _read_csv(listing):
                    skipped.setdefault(r["path"], r["reason"])
        data_prep.remove_leftovers(out, split)  # temp files of interrupted shards (none runs now)
        data_prep.write_manifest(out / f"manifest_{split}.csv", rows)
        skipped_csv = out / f"data_prep_skipped_{split}.csv"
        if skipped:
            with utils.atomic_write(skipped_csv, "w") as f:
                csv.writer(f, lineterminator="\n").writerows([("path", "reason"), *sorted(skipped.items())])
        else:
            skipped_csv.unlink(missing_ok=True)
        done += manifests + [out / f"data_prep_skipped_{split}.{p}.csv" for p in parts]
        lines.append(f"{split}: {total} mixtures from {count} shards -> {out / f'manifest_{split}.csv'}")
    for path in done:
        path.unlink(missing_ok=True)
    return lines
