"""The input of training: the STFT caches, per-epoch crops as tf.data batches, the learning rate.

Random crops of [train] crop_seconds from the memory-mapped cache, shuffled per epoch with a seed
derived from ([train] seed, epoch); crop offsets come from (seed, epoch, example), so an epoch's
batches are a pure function of the config and a resumed run sees exactly the batches it would have
seen. Examples shorter than the crop are zero-padded and their padding is masked out of the loss.
(On-the-fly mixing, the other input, is mixing.make_mix_dataset.)
"""

from __future__ import annotations

import math

import numpy as np

import spectral
import stft_cache
import utils
from train_settings import TrainParams


def open_cache(cfg, split: str):
    """The STFT cache of a split; refuses an empty one or one made with other [STFT] settings."""
    folder = stft_cache.cache_dir(cfg, split)
    cache = stft_cache.load_cache(folder)
    if len(cache) == 0:
        raise utils.PipelineError(f"{folder}: the {split} cache is empty")
    if cache.params != spectral.StftParams.from_config(cfg):
        raise utils.PipelineError(f"{folder}: built with other [STFT] settings than the config; run STFT.py")
    return cache


def crop_frames(cfg, params: TrainParams) -> int:
    sp = spectral.StftParams.from_config(cfg)
    return max(1, round(params.crop_seconds * sp.sample_rate / sp.hop))


def epoch_plan(n_frames: np.ndarray, seed: int, epoch: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """The order of examples and each one's crop start (in frames) for `epoch`.

    A pure function of (seed, epoch) and the cache: the order from a generator seeded with
    (seed, epoch), the start of example i from a uniform draw indexed by i (so it depends on
    (seed, epoch, i), not on where i lands in the order).
    """
    n_frames = np.asarray(n_frames, dtype=np.int64)
    order = np.random.default_rng([seed, epoch, 0]).permutation(len(n_frames))
    u = np.random.default_rng([seed, epoch, 1]).random(len(n_frames))
    room = np.maximum(n_frames - crop, 0) + 1  # number of valid starts
    starts = np.minimum((u * room).astype(np.int64), room - 1)
    return order, starts[order]


def load_crops(cache, index: np.ndarray, start: np.ndarray, crop: int):
    """Slices crops from the memmaps; pads short examples with zeros and marks valid frames."""
    n, f = len(index), cache.noisy.shape[1]
    noisy = np.zeros((n, crop, f), np.complex64)
    clean = np.zeros((n, crop, f), np.complex64)
    valid = np.zeros((n, crop), np.float32)
    for k, (i, s) in enumerate(zip(index, start)):
        length = int(min(crop, cache.n_frames[i] - s))
        a = int(cache.offsets[i] + s)
        noisy[k, :length] = cache.noisy[a : a + length]
        clean[k, :length] = cache.clean[a : a + length]
        valid[k, :length] = 1.0
    return noisy, clean, valid


COSINE_FLOOR = 0.01  # cosine decay ends at 1 % of the peak learning rate


def learning_rate_schedule(params: TrainParams):
    """Adam's learning rate: constant; learning_rate * 0.5 ** (step / lr_halving_steps); or a linear
    warm-up over warmup_steps followed by a cosine decay over cosine_steps. A function of the
    optimizer's own step counter, so it resumes exactly from a checkpoint."""
    import keras

    if params.cosine_steps or params.warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            0.0 if params.warmup_steps else params.learning_rate,
            decay_steps=max(params.cosine_steps, 1) if params.cosine_steps else 10**12,
            alpha=COSINE_FLOOR if params.cosine_steps else 1.0,
            warmup_target=params.learning_rate if params.warmup_steps else None,
            warmup_steps=params.warmup_steps,
        )
    if params.lr_halving_steps == 0:
        return params.learning_rate
    return keras.optimizers.schedules.ExponentialDecay(params.learning_rate, params.lr_halving_steps, 0.5)


def n_batches(n_examples: int, batch_size: int, drop_remainder: bool) -> int:
    return n_examples // batch_size if drop_remainder else math.ceil(n_examples / batch_size)


def make_dataset(cache, seed: int, epoch: int, crop: int, batch_size: int, skip_batches: int = 0,
                 drop_remainder: bool = False):  # fmt: skip
    """tf.data pipeline for one epoch: (noisy, clean, valid) batches of fixed-length crops.

    Only (index, start) pairs flow through the graph until the last moment; one numpy_function per
    batch slices the memmaps, so skipping batches on resume costs nothing.
    """
    tf = utils.import_tensorflow()
    order, starts = epoch_plan(cache.n_frames, seed, epoch, crop)
    f = cache.noisy.shape[1]

    def load(index, start):
        return load_crops(cache, index, start, crop)

    def load_tf(index, start):
        noisy, clean, valid = tf.numpy_function(
            load, [index, start], [tf.complex64, tf.complex64, tf.float32], stateful=False
        )
        return (
            tf.ensure_shape(noisy, [None, crop, f]),
            tf.ensure_shape(clean, [None, crop, f]),
            tf.ensure_shape(valid, [None, crop]),
        )

    ds = tf.data.Dataset.from_tensor_slices((order, starts))
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).skip(skip_batches)
    ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
