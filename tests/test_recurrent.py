"""recurrent.py: FastLSTM and FastGRU compute exactly Keras' LSTM and GRU, forward and backward."""

from __future__ import annotations

import numpy as np
import pytest

import recurrent as R

tf = R.tf
PAIRS = {"lstm": (R.FastLSTM, R.layers.LSTM, 2), "gru": (R.FastGRU, R.layers.GRU, 1)}  # (fast, keras, states)


@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("training", [False, True])  # True: the XLA loop with its own gradient
@pytest.mark.parametrize("backwards", [False, True])
def test_fast_layer_equals_keras_layer(rng, kind, training, backwards):
    """Outputs, final states and the gradients of inputs, initial states and every weight."""
    fast_cls, ref_cls, n_states = PAIRS[kind]
    x = tf.constant(rng.standard_normal((3, 11, 6)).astype(np.float32))
    states = [tf.constant(rng.standard_normal((3, 5)).astype(np.float32)) for _ in range(n_states)]
    kw = {"return_sequences": True, "return_state": True, "go_backwards": backwards}
    fast, ref = fast_cls(5, **kw), ref_cls(5, **kw)
    fast.build(x.shape)
    ref.build(x.shape)
    for w in fast.weights:  # a non-zero bias and larger weights exercise every gate
        w.assign(0.5 * rng.standard_normal(w.shape).astype(np.float32))
    ref.set_weights(fast.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, *states])
        outs = [layer(x, initial_state=states, training=training) for layer in (fast, ref)]
        losses = [
            tf.reduce_sum(y**2) + sum(tf.reduce_sum(tf.sin((k + 1.0) * s)) for k, s in enumerate(rest))
            for y, *rest in outs
        ]
    assert len(outs[0]) == len(outs[1]) == 1 + n_states
    for a, b in zip(*outs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    grads = [
        tape.gradient(loss, [x, *states, *layer.trainable_weights])
        for loss, layer in zip(losses, (fast, ref))
    ]
    for gf, gr in zip(*grads):
        np.testing.assert_allclose(gf.numpy(), gr.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_fast_layer_trains_on_changing_shapes(rng, kind):
    """The compiled training loop is retraced generically after a few shapes and must still work."""
    layer = PAIRS[kind][0](4, return_sequences=True)
    for batch, frames in [(1, 3), (2, 5), (3, 7), (2, 9), (1, 2), (4, 4)]:
        x = tf.constant(rng.standard_normal((batch, frames, 3)).astype(np.float32))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, training=True) ** 2)
        grads = tape.gradient(loss, layer.trainable_weights)
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
