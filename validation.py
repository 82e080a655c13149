"""Per-epoch validation: the first [train] validation_files test files, scored on waveforms against the
TRUE clean speech (metrics.score, the scoring path evaluate.py uses too), and the epoch means."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import manifests
import spectral
import utils
from train_settings import TrainParams

if TYPE_CHECKING:
    from trainer import Trainer

log = utils.get_logger("train")

# Metrics computed at validation (waveforms, against the true clean speech).
VAL_METRICS = ("sdr", "si_sdr", "snr")
# Validation examples per inference call (equal lengths only, so no padding).
VAL_BATCH = 8
# A validation file whose SDR / SI-SDR / SNR(i) failed (silent or non-finite output) counts as this
# many dB in the epoch mean, so silencing files can never raise the score that picks best/.
FAILED_DB = -50.0


@dataclass
class ValExample:
    row: dict
    noisy_stft: np.ndarray  # (T, F) from the cache
    clean_stft: np.ndarray
    noisy_wav: np.ndarray
    clean_wav: np.ndarray
    noisy_scores: dict


class Validator:
    """A fixed subset (the first validation_files rows of Testing_STFT) scored every validation
    epoch: loss on the STFTs, and SDR / SI-SDR / SNR(i) on waveforms against the true clean wav."""

    def __init__(self, cfg, params: TrainParams, cache):
        import metrics

        self.metrics = metrics
        self.sp = spectral.StftParams.from_config(cfg)
        n = min(params.validation_files, len(cache))
        # Manifest indices of the validation files (test split), stored in best/metrics.json so
        # evaluate.py can report the test scores without them.
        self.manifest_indices = [int(cache.rows[i]["manifest_index"]) for i in range(n)]
        # ... and by identity: the manifest's sha256, the noisy names and each noisy file's sha256
        # (indices alone would name the first files of any other test set)
        manifest = Path(cache.meta.get("manifest", ""))
        self.identity = {"manifest": str(manifest), "manifest_sha256": None, "noisy": []}
        if manifest.is_file():
            self.identity["manifest_sha256"] = utils.file_sha256(manifest)
            rows = manifests.read_rows(manifest, ("index", "noisy"))
            names = {r["index"].strip(): manifests.name(r["noisy"]) for r in rows}
            self.identity["noisy"] = [names.get(str(i), "") for i in self.manifest_indices]
        self.identity["noisy_sha256"] = [utils.file_sha256(cache.rows[i]["noisy"]) for i in range(n)]
        self.examples = []
        for i in range(n):
            row = cache.rows[i]
            noisy_stft, clean_stft = cache.example(i)
            clean_wav, _ = utils.read_audio(row["clean"], self.sp.sample_rate)
            noisy_wav, _ = utils.read_audio(row["noisy"], self.sp.sample_rate)
            values, _ = metrics.score(clean_wav, noisy_wav, sr=self.sp.sample_rate, metrics=VAL_METRICS)
            self.examples.append(ValExample(row, noisy_stft, clean_stft, noisy_wav, clean_wav, values))
        self.n_audio = min(params.audio_examples, n)

    def __len__(self):
        return len(self.examples)

    def batches(self) -> list[list[int]]:
        """Example indices grouped by length (data_prep's clips all have one), VAL_BATCH at most."""
        groups: dict[int, list[int]] = {}
        for k, ex in enumerate(self.examples):
            groups.setdefault(len(ex.noisy_stft), []).append(k)
        return [g[i : i + VAL_BATCH] for g in groups.values() for i in range(0, len(g), VAL_BATCH)]

    def run(self, trainer: Trainer):
        """Returns (means over the examples, outputs of the first n_audio examples)."""
        rows, outputs = {}, {}
        for group in self.batches():
            noisy = np.stack([self.examples[k].noisy_stft for k in group])
            clean = np.stack([self.examples[k].clean_stft for k in group])
            S_hat, mask, losses = trainer.enhance(noisy, clean)
            for j, k in enumerate(group):
                ex = self.examples[k]
                enhanced = spectral.istft(S_hat[j], self.sp, length=len(ex.noisy_wav))
                S_hat_j, mask_j = S_hat[j, : len(ex.clean_stft)], mask[j, : len(ex.clean_stft)]
                values, _ = self.metrics.score(
                    ex.clean_wav, enhanced, noisy=ex.noisy_wav, sr=self.sp.sample_rate, metrics=VAL_METRICS
                )
                values["loss"] = float(losses[j])
                values.update({f"{m}_noisy": ex.noisy_scores[m] for m in VAL_METRICS})
                rows[k] = values
                if k < self.n_audio:
                    outputs[k] = (ex, S_hat_j, mask_j, enhanced)
        return summarize_validation([rows[k] for k in sorted(rows)]), [outputs[k] for k in sorted(outputs)]


def summarize_validation(rows: list[dict]) -> dict:
    """Means over the validation files. A failed dB metric (NaN: silent or non-finite output; -inf)
    counts as FAILED_DB rather than being dropped, so a model that silences files cannot win best/;
    +inf (an exact estimate) counts as 100 dB. The loss averages its finite values. <m>_failed counts
    the model's failures per metric."""
    summary = {}
    for key in rows[0] if rows else ():
        a = np.array([r[key] for r in rows], np.float64)
        failed = np.isnan(a) | np.isneginf(a)
        if key == "loss":
            summary[key] = float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else math.nan
        else:
            summary[key] = float(np.nan_to_num(a, nan=FAILED_DB, neginf=FAILED_DB, posinf=100.0).mean())
        if key in (*VAL_METRICS, "snri"):
            summary[f"{key}_failed"] = int(failed.sum())
    if summary.get("si_sdr_failed"):
        log.warning(
            f"validation: SI-SDR failed on {summary['si_sdr_failed']} of {len(rows)} files "
            f"(silent or non-finite output), each counted as {FAILED_DB:g} dB"
        )
    return summary
