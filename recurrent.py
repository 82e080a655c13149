"""Recurrent layers with a fast CPU training loop: FastLSTM and FastGRU.

Both are the stock Keras layers (same weights, same cell, same results; `self.cell` is the standard cell,
which the streaming step calls directly) with a leaner loop: the input projection x @ W + b is one matmul
over all frames, the time loop only does h @ U, and in training the loop and its hand-written backward
are XLA-compiled. They fall back to Keras' own loop for masks, dropout, non-default activations and GPUs
(cuDNN). Used by model.py; `[model] cell` picks one.
"""

from __future__ import annotations

import utils

utils.quiet_tensorflow()
import keras  # noqa: E402  (after quiet_tensorflow)
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402


def _uses_gpu(layer) -> bool:
    return layer.use_cudnn in ("auto", True) and bool(tf.config.list_logical_devices("GPU"))


def _default_activations(cell) -> bool:
    return (
        cell.activation is keras.activations.tanh and cell.recurrent_activation is keras.activations.sigmoid
    )


def _fast_path(layer, mask, training) -> bool:
    dropout = training and (layer.dropout or layer.recurrent_dropout)
    return (
        mask is None
        and not _uses_gpu(layer)
        and not dropout
        and not layer.unroll
        and _default_activations(layer.cell)
        and layer.cell.use_bias
    )


# ----------------------------------------------------------------------------- LSTM


def _lstm_forward(z, h0, c0, U):
    """LSTM recurrence over time-major pre-activations z = x @ W + b (T, B, 4u), Keras gate order
    (i, f, c, o), sigmoid / tanh. Returns hs, cs and the gate values the backward pass needs."""

    def step(carry, z_t):
        g = z_t + tf.matmul(carry[0], U)
        i, f, cand, o = tf.split(g, 4, axis=-1)
        i, f, o, cand = tf.sigmoid(i), tf.sigmoid(f), tf.sigmoid(o), tf.tanh(cand)
        c = f * carry[1] + i * cand
        tc = tf.tanh(c)
        return (o * tc, c, i, f, cand, o, tc)

    zeros = tf.zeros_like(h0)
    return tf.scan(step, z, initializer=(h0, c0, zeros, zeros, zeros, zeros, zeros))


def _lstm_backward(dhs, dc_last, h0, c0, hs, cs, i, f, cand, o, tc, U):
    """Backward of _lstm_forward: a reverse scan that only carries dh, dc and emits dz per step; the
    recurrent kernel's gradient is one matmul over all steps (not a per-step accumulation)."""
    units = tf.shape(h0)[-1]  # dynamic: a reduce_retracing trace may not know the static size
    c_prev = tf.concat([c0[None], cs[:-1]], axis=0)

    def step(carry, elems):
        dh_t, i_t, f_t, cand_t, o_t, tc_t, cp_t = elems
        dh = dh_t + carry[0]
        dc = carry[1] + dh * o_t * (1 - tc_t * tc_t)
        dz = tf.concat(
            [
                dc * cand_t * i_t * (1 - i_t),
                dc * cp_t * f_t * (1 - f_t),
                dc * i_t * (1 - cand_t * cand_t),
                dh * tc_t * o_t * (1 - o_t),
            ],
            axis=-1,
        )
        return (tf.matmul(dz, U, transpose_b=True), dc * f_t, dz)

    init = (tf.zeros_like(h0), dc_last, tf.zeros([tf.shape(h0)[0], 4 * units], h0.dtype))
    dh0, dc0, dz = tf.scan(step, (dhs, i, f, cand, o, tc, c_prev), initializer=init, reverse=True)
    h_prev = tf.concat([h0[None], hs[:-1]], axis=0)
    dU = tf.matmul(tf.reshape(h_prev, [-1, units]), tf.reshape(dz, [-1, 4 * units]), transpose_a=True)
    return dz, dh0[0], dc0[0], dU


def _xla(fn):
    """XLA fuses the ~20 small element-wise ops of each step: ~3x less CPU per training step. Compiled
    once per (T, B) shape, so it is used for training (fixed crops) only; inference keeps T dynamic."""
    return tf.function(fn, jit_compile=True, autograph=False, reduce_retracing=True)


_lstm_forward_xla, _lstm_backward_xla = _xla(_lstm_forward), _xla(_lstm_backward)


def _lstm_train_scan(z, h0, c0, U):
    """(hs (T, B, u), c_last) with a hand-written gradient; both loops XLA-compiled."""

    # The compiled calls get stop_gradient'ed inputs so that no tape records them (their own autodiff
    # through XLA loops is unsupported, and custom_gradient supplies the gradient anyway).
    stop = tf.nest.map_structure

    @tf.custom_gradient
    def run(z, h0, c0, U):
        hs, cs, *gates = _lstm_forward_xla(*stop(tf.stop_gradient, (z, h0, c0, U)))

        def grad(dhs, dc_last):
            dhs = tf.zeros_like(hs) if dhs is None else dhs
            dc_last = tf.zeros_like(c0) if dc_last is None else dc_last
            args = stop(tf.stop_gradient, (dhs, dc_last, h0, c0, hs, cs, *gates, U))
            return _lstm_backward_xla(*args)

        return (hs, cs[-1]), grad

    return run(z, h0, c0, U)


def _lstm_infer_scan(z, h0, c0, U):
    """(hs (T, B, u), c_last): the lean forward loop (no saved gates), any T without recompiling."""

    def step(carry, z_t):
        i, f, cand, o = tf.split(z_t + tf.matmul(carry[0], U), 4, axis=-1)
        c = tf.sigmoid(f) * carry[1] + tf.sigmoid(i) * tf.tanh(cand)
        return (tf.sigmoid(o) * tf.tanh(c), c)

    hs, cs = tf.scan(step, z, initializer=(h0, c0))
    return hs, cs[-1]


class _FastLoop:
    """What FastLSTM and FastGRU add to their Keras layer: the `xla` switch of the training loop, and the
    cell renamed after the layer (a step model calling several cells needs unique operation names)."""

    def __init__(self, units, xla: bool = True, **kwargs):
        super().__init__(units, **kwargs)
        self.xla = bool(xla)
        self.cell.name = f"{self.name}_cell"

    def get_config(self):
        return {**super().get_config(), "xla": self.xla}


@keras.saving.register_keras_serializable(package="se")
class FastLSTM(_FastLoop, layers.LSTM):
    """keras LSTM (same weights, same cell, same results) with a faster CPU loop.

    Stock Keras multiplies each step's input by the kernel inside the time loop and lets autodiff
    accumulate the recurrent kernel's gradient step by step. Here x @ W + b is one matmul over all
    frames, the loop only does h @ U, and in training the loop and its hand-written backward are
    XLA-compiled (`xla=True`). Falls back to Keras' own loop for masks, dropout, non-default
    activations and GPUs (cuDNN). `self.cell` is the standard LSTMCell, so the streaming step calls it
    directly (the cell is renamed after the layer so a step model calling several cells has unique
    operation names).
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not _fast_path(self, mask, training):
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        cell = self.cell
        z = tf.transpose(tf.matmul(sequences, cell.kernel) + cell.bias, [1, 0, 2])  # time-major
        if self.go_backwards:  # Keras semantics: process reversed, emit in processing order
            z = tf.reverse(z, [0])
        scan = _lstm_train_scan if (training and self.xla) else _lstm_infer_scan
        hs, c_last = scan(z, initial_state[0], initial_state[1], tf.convert_to_tensor(cell.recurrent_kernel))
        h_last = hs[-1]
        outputs = tf.transpose(hs, [1, 0, 2]) if self.return_sequences else h_last
        return h_last, outputs, [h_last, c_last]


# ----------------------------------------------------------------------------- GRU


def _gru_forward(z, h0, U, b):
    """GRU recurrence over time-major input pre-activations z = x @ W + b_in (T, B, 3u), Keras gate order
    (z, r, h), reset gate after the matmul (Keras' default): r = s(z_r + h U_r + b_r),
    u = s(z_z + h U_z + b_z), n = tanh(z_h + r * (h U_h + b_h)), h' = u * h + (1 - u) * n.
    Returns hs and what the backward pass needs."""

    def step(carry, z_t):
        h = carry[0]
        xz, xr, xh = tf.split(z_t, 3, axis=-1)
        rz, rr, rh = tf.split(tf.matmul(h, U) + b, 3, axis=-1)
        u, r = tf.sigmoid(xz + rz), tf.sigmoid(xr + rr)
        n = tf.tanh(xh + r * rh)
        return (u * h + (1 - u) * n, u, r, n, rh)

    zeros = tf.zeros_like(h0)
    return tf.scan(step, z, initializer=(h0, zeros, zeros, zeros, zeros))


def _gru_backward(dhs, h0, hs, u, r, n, rh, U):
    """Backward of _gru_forward: a reverse scan carrying dh; returns the gradients of z, h0, U and the
    recurrent bias b (U's and b's as one matmul / sum over all steps)."""
    units = tf.shape(h0)[-1]
    h_prev = tf.concat([h0[None], hs[:-1]], axis=0)

    def step(carry, elems):
        dh_t, hp, u_t, r_t, n_t, rh_t = elems
        dh = dh_t + carry[0]
        du = dh * (hp - n_t) * u_t * (1 - u_t)
        dn = dh * (1 - u_t) * (1 - n_t * n_t)  # gradient of n's pre-activation
        dr = dn * rh_t * r_t * (1 - r_t)
        d_rec = tf.concat([du, dr, dn * r_t], axis=-1)  # gradient of h U + b
        d_in = tf.concat([du, dr, dn], axis=-1)  # gradient of z
        return (dh * u_t + tf.matmul(d_rec, U, transpose_b=True), d_in, d_rec)

    zeros = tf.zeros([tf.shape(h0)[0], 3 * units], h0.dtype)
    dh0, dz, d_rec = tf.scan(step, (dhs, h_prev, u, r, n, rh), initializer=(tf.zeros_like(h0), zeros, zeros),
                             reverse=True)  # fmt: skip
    d_rec_flat = tf.reshape(d_rec, [-1, 3 * units])
    dU = tf.matmul(tf.reshape(h_prev, [-1, units]), d_rec_flat, transpose_a=True)
    return dz, dh0[0], dU, tf.reduce_sum(d_rec_flat, axis=0)


_gru_forward_xla, _gru_backward_xla = _xla(_gru_forward), _xla(_gru_backward)


def _gru_train_scan(z, h0, U, b):
    """hs (T, B, u) with a hand-written gradient; both loops XLA-compiled (as _lstm_train_scan)."""
    stop = tf.nest.map_structure

    @tf.custom_gradient
    def run(z, h0, U, b):
        hs, *saved = _gru_forward_xla(*stop(tf.stop_gradient, (z, h0, U, b)))

        def grad(dhs):
            args = stop(tf.stop_gradient, (dhs, h0, hs, *saved, U))
            return _gru_backward_xla(*args)

        return hs, grad

    return run(z, h0, U, b)


def _gru_infer_scan(z, h0, U, b):
    """hs (T, B, u): the lean forward loop, any T without recompiling."""

    def step(h, z_t):
        xz, xr, xh = tf.split(z_t, 3, axis=-1)
        rz, rr, rh = tf.split(tf.matmul(h, U) + b, 3, axis=-1)
        u, r = tf.sigmoid(xz + rz), tf.sigmoid(xr + rr)
        return u * h + (1 - u) * tf.tanh(xh + r * rh)

    return tf.scan(step, z, initializer=h0)


@keras.saving.register_keras_serializable(package="se")
class FastGRU(_FastLoop, layers.GRU):
    """keras GRU (reset_after=True, Keras' default) with the fast CPU loop of FastLSTM."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not (_fast_path(self, mask, training) and self.cell.reset_after):
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        cell = self.cell
        h0 = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
        z = tf.transpose(tf.matmul(sequences, cell.kernel) + cell.bias[0], [1, 0, 2])  # time-major
        if self.go_backwards:
            z = tf.reverse(z, [0])
        scan = _gru_train_scan if (training and self.xla) else _gru_infer_scan
        U, b = tf.convert_to_tensor(cell.recurrent_kernel), tf.convert_to_tensor(cell.bias[1])
        hs = scan(z, h0, U, b)
        h_last = hs[-1]
        outputs = tf.transpose(hs, [1, 0, 2]) if self.return_sequences else h_last
        return h_last, outputs, [h_last]
