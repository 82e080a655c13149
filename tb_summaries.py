"""What a validation epoch leaves to look at and listen to: TensorBoard audio, spectrogram and mask
images of the fixed examples, and their wav copies under <enhanced_dir>/<run>/epoch_E/."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import utils


def _colormap(x: np.ndarray, name: str) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 through a matplotlib colormap (no figure)."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.clip(x, 0.0, 1.0))
    return (rgba[..., :3] * 255).astype(np.uint8)


def spectrogram_image(X: np.ndarray, floor_db: float = 80.0, ref_db: float | None = None) -> np.ndarray:
    """(T, F) complex -> (F, T, 3) uint8 log-magnitude image, low frequencies at the bottom."""
    db = 20 * np.log10(np.abs(X).T + 1e-8)
    top = db.max() if ref_db is None else ref_db
    return _colormap((db - (top - floor_db)) / floor_db, "magma")[::-1]


def mask_image(m: np.ndarray, bound: float) -> np.ndarray:
    """(T, F) mask component in [-bound, bound] -> (F, T, 3) uint8 (diverging colours)."""
    return _colormap((m.T / max(bound, 1e-6) + 1.0) / 2.0, "RdBu_r")[::-1]


def write_examples_summary(writer, outputs, epoch: int, sample_rate: int, mask_bound: float) -> None:
    tf = utils.import_tensorflow()
    with writer.as_default(step=epoch):
        for k, (ex, S_hat, mask, enhanced) in enumerate(outputs):
            tag = f"example_{k}"
            for name, wav in (("noisy", ex.noisy_wav), ("enhanced", enhanced), ("clean", ex.clean_wav)):
                audio = utils.peak_normalize(np.asarray(wav, np.float32))
                tf.summary.audio(f"{tag}/{name}", audio[None, :, None], sample_rate)
            ref = 20 * np.log10(np.abs(ex.noisy_stft).max() + 1e-8)  # one scale for all three
            images = {
                "spectrogram_noisy": spectrogram_image(ex.noisy_stft, ref_db=ref),
                "spectrogram_enhanced": spectrogram_image(S_hat, ref_db=ref),
                "spectrogram_clean": spectrogram_image(ex.clean_stft, ref_db=ref),
                "mask_real": mask_image(mask[..., 0], mask_bound),
                "mask_imag": mask_image(mask[..., 1], mask_bound),
            }
            for name, image in images.items():
                tf.summary.image(f"{tag}/{name}", image[None])


def write_examples_audio(folder: Path, outputs, sample_rate: int) -> None:
    """Listening copies of the fixed validation examples (peak-safe; scores use the raw signals)."""
    for k, (ex, _S_hat, _mask, enhanced) in enumerate(outputs):
        stem = f"{k:02d}_{Path(ex.row['noisy']).stem}"
        for name, wav in (("noisy", ex.noisy_wav), ("enhanced", enhanced), ("clean", ex.clean_wav)):
            utils.write_audio(folder / f"{stem}_{name}.wav", utils.peak_normalize(wav), sample_rate)
