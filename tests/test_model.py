"""model.py: shapes, exact causality, mask bounds, complex product, loss, streaming, save/load."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from conftest import write_config

import model as M
import spectral
import spectral_tf
import utils

tf = M.tf
F = 257


TINY = {"projection_units": 32, "lstm_units": 32, "lstm_layers": 1, "dense_units": 32}


def make_cfg(tmp_path, **model):
    """A tiny model config with [model] overrides as keyword arguments.

    (write_config replaces a whole section's tiny defaults when that section is overridden.)
    """
    values = {k: str(v) for k, v in {**TINY, **model}.items()}
    return utils.load_config(write_config(tmp_path, {"model": values}))


def features(rng, batch=2, frames=12, channels=4, scale=1.0):
    return (scale * rng.standard_normal((batch, frames, F, channels))).astype(np.float32)


def run(model, x):
    return M.mask_function(model)(tf.constant(x)).numpy()


def random_stft(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


# ----------------------------------------------------------------------------- shapes and bounds


@pytest.mark.parametrize("arch", ["causal", "bidirectional"])
@pytest.mark.parametrize("lookahead", [0, 3])
def test_output_shape(tmp_path, rng, arch, lookahead):
    model = M.build_model(make_cfg(tmp_path, architecture=arch, lookahead_frames=lookahead))
    for frames in (1, 9):  # T is dynamic, down to a single frame
        assert run(model, features(rng, 2, frames)).shape == (2, frames, F, 2)


def test_two_channel_features(tmp_path, rng):
    cfg = utils.load_config(write_config(tmp_path, {"features": {"delta_phase": "false"}}))
    model = M.build_model(cfg)
    assert model.input_shape == (None, None, F, 2)
    assert run(model, features(rng, 1, 5, channels=2)).shape == (1, 5, F, 2)


def test_seed_output_shape(tmp_path, rng):
    model = M.build_model(make_cfg(tmp_path, architecture="seed"))
    assert run(model, features(rng, 1, 3)).shape == (1, 3, F, 2)


def test_seed_parameter_count(tmp_path):
    """The seed stack, counted independently from its description: ~27.6 M parameters."""
    model = M.build_model(make_cfg(tmp_path, architecture="seed"))
    c, k = 4, 32
    convs = (7 * c * k + k) + (7 * k * k + k) + 5 * (25 * k * k + k) + (k * 8 + 8)
    blstm = 2 * 4 * (1023 * (8 * F + 1023) + 1023)
    dense = (2 * 1023 * 873 + 873) + (873 * 2 * F + 2 * F)
    assert model.count_params() == convs + blstm + dense
    assert abs(model.count_params() - 27.6e6) / 27.6e6 < 0.005


TINY_SEED = {"seed_conv_filters": 4, "seed_blstm_units": 8, "seed_dense_units": 8}


@pytest.mark.parametrize("arch", ["causal", "bidirectional", "seed"])
def test_mask_is_bounded(tmp_path, rng, arch):
    bound = 1.3
    model = M.build_model(make_cfg(tmp_path, architecture=arch, mask_bound=bound, **TINY_SEED))
    for w in model.trainable_weights:  # large weights and inputs drive the logits far out
        w.assign(w * 20.0)
    mask = run(model, features(rng, 2, 6, scale=100.0))
    mag = np.hypot(mask[..., 0], mask[..., 1])
    assert np.all(np.isfinite(mask))
    assert mag.max() <= bound * (1 + 1e-6)
    assert mag.max() > 0.9 * bound  # saturates at the bound, not below it


def test_initial_mask_is_not_degenerate(tmp_path, rng):
    model = M.build_model(make_cfg(tmp_path))
    mask = run(model, features(rng, 2, 20))
    mag = np.hypot(mask[..., 0], mask[..., 1])
    assert 0.8 < mag.mean() < 1.2  # starts near the identity: S_hat ~ X
    assert mag.std() > 1e-3  # and depends on the input


def test_bad_architecture_is_a_pipeline_error(tmp_path):
    with pytest.raises(utils.PipelineError, match="architecture"):
        M.build_model(make_cfg(tmp_path, architecture="transformer"))
    with pytest.raises(utils.PipelineError, match="lstm_layers"):
        M.build_model(make_cfg(tmp_path, lstm_layers="two"))


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("mode", ["delay", "context"])
@pytest.mark.parametrize("lookahead,frames,k", [(0, 16, 10), (3, 16, 10), (20, 45, 30)])  # 20: the maximum
def test_causal_model_sees_exactly_lookahead_frames(tmp_path, rng, lookahead, frames, k, mode):
    cfg = make_cfg(tmp_path, lookahead_frames=lookahead, lstm_layers=2, lookahead_mode=mode)
    model = M.build_model(cfg)
    x = features(rng, 1, frames)
    # perturb input frame k only, then every frame after it (k > L, T > 2L: outputs on both sides)
    for last in (k + 1, frames):
        y = x.copy()
        y[:, k:last] += rng.standard_normal(y[:, k:last].shape).astype(np.float32)
        for training in (False, True):  # inference loop and the XLA training loop
            before, after = (model(tf.constant(v), training=training).numpy() for v in (x, y))
            np.testing.assert_allclose(
                after[:, : k - lookahead], before[:, : k - lookahead], rtol=0, atol=1e-6
            )
            # output k - L does see frame k: the lookahead is really L frames, not fewer
            assert np.abs(after[:, k - lookahead] - before[:, k - lookahead]).max() > 1e-4


def test_future_context_model(tmp_path):
    delay = M.build_model(make_cfg(tmp_path, lookahead_frames=3))
    cfg = make_cfg(tmp_path, lookahead_frames=3, lookahead_mode="Context")
    context = M.build_model(cfg)
    # a 4-tap depthwise filter (+ bias) per projection channel, no output delay
    assert context.count_params() == delay.count_params() + 4 * 32 + 32
    assert M.count_macs_per_frame(context) == M.count_macs_per_frame(delay) + 4 * 32
    assert "lookahead_drop" not in [layer.name for layer in context.layers]
    assert M.algorithmic_latency_ms(cfg) == pytest.approx(55.0)
    with pytest.raises(utils.PipelineError, match="lookahead_mode=delay"):
        M.StreamingMask(context, cfg)
    # L = 0: the same model either way
    assert M.ModelParams.from_config(make_cfg(tmp_path, lookahead_mode="context")).streamable
    with pytest.raises(utils.PipelineError, match="lookahead_mode"):
        M.build_model(make_cfg(tmp_path, lookahead_mode="future"))


def test_bidirectional_model_is_not_causal(tmp_path, rng):
    model = M.build_model(make_cfg(tmp_path, architecture="bidirectional"))
    x = features(rng, 1, 12)
    y = x.copy()
    y[:, -1] += 1.0
    assert np.abs(run(model, y)[:, 0] - run(model, x)[:, 0]).max() > 1e-5


# ----------------------------------------------------------------------------- mask and loss


def test_apply_mask_is_complex_product(rng):
    X = random_stft(rng, (2, 5, F))
    mask = rng.standard_normal((2, 5, F, 2)).astype(np.float32)
    expected = (mask[..., 0] + 1j * mask[..., 1]) * X
    out = M.apply_mask(tf.constant(X), tf.constant(mask)).numpy()
    assert out.dtype == np.complex64
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def numpy_loss(S, S_hat, p=0.3, lam=0.113, eps=1e-8):
    def parts(Z):
        mag = np.sqrt(np.abs(Z.astype(np.complex128)) ** 2 + eps)
        return mag**p, mag**p * np.exp(1j * np.angle(Z))

    m, c = parts(S)
    m_hat, c_hat = parts(S_hat)
    return np.mean((m - m_hat) ** 2) + lam * np.mean(np.abs(c - c_hat) ** 2)


def test_loss_matches_numpy_reference(rng):
    S, S_hat = random_stft(rng, (2, 7, F)), 0.5 * random_stft(rng, (2, 7, F))
    loss = M.compressed_loss(tf.constant(S), tf.constant(S_hat))
    assert loss.dtype == tf.float32 and loss.shape == ()
    np.testing.assert_allclose(loss.numpy(), numpy_loss(S, S_hat), rtol=1e-5)
    np.testing.assert_allclose(
        M.compressed_loss(S, S_hat, power=0.5, lam=2.0).numpy(), numpy_loss(S, S_hat, 0.5, 2.0), rtol=1e-5
    )


def test_loss_zero_only_at_target(rng):
    S = random_stft(rng, (1, 6, F))
    assert M.compressed_loss(S, S).numpy() == 0.0
    assert M.compressed_loss(S, 0.9 * S).numpy() > 0
    assert M.compressed_loss(S, S * np.exp(0.3j).astype(np.complex64)).numpy() > 0  # phase error counts


def test_loss_gradient_finite_at_zero_estimate(rng):
    S = tf.constant(random_stft(rng, (1, 4, F)))
    z = tf.Variable(tf.zeros((1, 4, F, 2)))
    with tf.GradientTape() as tape:
        loss = M.compressed_loss(S, tf.complex(z[..., 0], z[..., 1]))
    grad = tape.gradient(loss, z).numpy()
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_loss_frame_mask_ignores_padding(rng):
    S, S_hat = random_stft(rng, (2, 9, F)), random_stft(rng, (2, 9, F))
    valid = np.zeros((2, 9), np.float32)
    valid[0, :9], valid[1, :4] = 1, 1
    S_hat[1, 4:] = 100.0  # garbage in the padding must not count
    masked = M.compressed_loss(S, S_hat, mask=valid).numpy()
    ref = numpy_loss(np.concatenate([S[0], S[1, :4]]), np.concatenate([S_hat[0], S_hat[1, :4]]))
    np.testing.assert_allclose(masked, ref, rtol=1e-5)


def test_loss_from_config(tmp_path, rng):
    cfg = utils.load_config(write_config(tmp_path, {"loss": {"power": "0.5", "lam": "0"}}))
    S, S_hat = random_stft(rng, (1, 3, F)), random_stft(rng, (1, 3, F))
    expected = np.mean(
        (np.abs(S.astype(np.complex128)) ** 0.5 - np.abs(S_hat.astype(np.complex128)) ** 0.5) ** 2
    )
    np.testing.assert_allclose(M.loss_from_config(cfg)(S, S_hat).numpy(), expected, rtol=1e-4)


@pytest.mark.slow
def test_training_steps_reduce_loss(tmp_path, rng):
    """A full train step (features, model, complex product, loss, Adam) in a tf.function learns."""
    cfg = make_cfg(tmp_path, lookahead_frames=1)
    model = M.build_model(cfg)
    loss_fn, optimizer = M.loss_from_config(cfg), M.keras.optimizers.Adam(3e-3)
    noisy = random_stft(rng, (2, 20, F))
    clean = (0.3 * noisy).astype(np.complex64)  # a gain the mask can learn

    @tf.function
    def step(X, S):
        with tf.GradientTape() as tape:
            loss = loss_fn(S, M.apply_mask(X, model(spectral_tf.features_tf(X), training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    losses = [float(step(noisy, clean)) for _ in range(30)]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


def test_enhance_spectrogram(tmp_path, rng):
    cfg = make_cfg(tmp_path)
    model = M.build_model(cfg)
    X = random_stft(rng, (2, 8, F))
    mask = run(model, spectral.features(X))
    expected = (mask[..., 0] + 1j * mask[..., 1]) * X
    out = M.enhance_spectrogram(model, X, cfg)
    assert out.shape == X.shape and out.dtype == np.complex64
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(M.enhance_spectrogram(model, X[1], cfg), out[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(utils.PipelineError):
        M.enhance_spectrogram(model, X[..., :100], cfg)


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("lookahead,frames", [(0, 30), (2, 30), (2, 1), (20, 45)])
def test_streaming_equals_whole_clip(tmp_path, rng, lookahead, frames):
    cfg = make_cfg(tmp_path, lookahead_frames=lookahead, lstm_layers=2)
    model = M.build_model(cfg)
    x = features(rng, 1, frames)
    whole = run(model, x)[0]
    stream = M.StreamingMask(model, cfg)
    for _ in range(2):  # flush() resets, so a second clip gives the same result
        out = [stream.step(frame) for frame in x[0]]
        assert all(m is None for m in out[:lookahead])  # the lookahead fills first
        masks = [m for m in out if m is not None] + list(stream.flush())
        assert len(masks) == frames
        np.testing.assert_allclose(np.stack(masks), whole, atol=1e-4)


VARIANTS = {  # [model] settings with their own streaming state: (settings, state sizes per layer)
    "gru": {"cell": "gru"},
    "lstm_norm": {"input_norm": "true"},
    "gru_norm": {"cell": "GRU", "input_norm": "true"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("lookahead", [0, 2])
def test_stateful_graphs_equal_whole_clip(tmp_path, rng, variant, lookahead):
    """GRU and the causal input norm carry their state through the one-frame step (StreamingMask) and
    the block graph (KerasChunkRunner, uneven blocks): both give the whole-clip masks."""
    cfg = make_cfg(tmp_path, lookahead_frames=lookahead, lstm_layers=2, **VARIANTS[variant])
    model = M.build_model(cfg)
    x = features(rng, 1, 37)
    x[0, :, :, :2] *= 3.0  # far from the norm's starting mean: its state must matter
    whole = run(model, x)[0]
    stream = M.StreamingMask(model, cfg)
    masks = [m for m in (stream.step(f) for f in x[0]) if m is not None] + list(stream.flush())
    np.testing.assert_allclose(np.stack(masks), whole, atol=1e-4)
    blocks = M.KerasChunkRunner(model, cfg)
    edges = [0, 1, 5, 17, 18, 37]
    masks = [blocks.push(x[0, a:b]) for a, b in zip(edges, edges[1:])] + [blocks.flush()]
    np.testing.assert_allclose(np.concatenate(masks), whole, atol=1e-4)


def test_state_specs(tmp_path):
    assert M.state_specs(make_cfg(tmp_path, lstm_layers=2)) == [
        ("h_0", 32),
        ("c_0", 32),
        ("h_1", 32),
        ("c_1", 32),
    ]
    gru_norm = make_cfg(tmp_path, lstm_layers=2, cell="gru", input_norm="true")
    assert M.state_specs(gru_norm) == [("norm", F), ("h_0", 32), ("h_1", 32)]
    step = M.streaming_step_model(M.build_model(gru_norm), gru_norm)
    assert [tuple(i.shape) for i in step.inputs] == [(1, F, 4), (1, F), (1, 32), (1, 32)]
    assert [tuple(o.shape) for o in step.outputs] == [(1, F, 2), (1, F), (1, 32), (1, 32)]


def test_input_norm_removes_the_level(tmp_path, rng):
    """After the running mean settles, a clip 20 dB louder gets the same mask (compression p = 0.3:
    |Xc| scales by 10^(0.3)); the delta-phase channels are unchanged by level anyway."""
    cfg = make_cfg(tmp_path, input_norm="true")
    model = M.build_model(cfg)
    x = features(rng, 1, 600)
    x[..., :2] = np.abs(x[..., :2]) * 0.5  # a steady spectrum
    loud = x.copy()
    loud[..., :2] *= 10**0.3
    a, b = run(model, x)[0], run(model, loud)[0]
    np.testing.assert_allclose(a[-100:], b[-100:], atol=1e-3)
    assert np.abs(a[:5] - b[:5]).max() > 1e-3  # at the start it is still adapting
    with pytest.raises(utils.PipelineError, match="input_norm needs architecture=causal"):
        M.build_model(make_cfg(tmp_path, input_norm="true", architecture="bidirectional"))
    with pytest.raises(utils.PipelineError, match="cell"):
        M.build_model(make_cfg(tmp_path, cell="rnn"))


def test_block_graph_refuses_non_streamable_models(tmp_path):
    for settings in ({"lookahead_frames": 3, "lookahead_mode": "context"}, {"architecture": "bidirectional"}):
        cfg = make_cfg(tmp_path, **settings)
        with pytest.raises(utils.PipelineError, match="streaming needs"):
            M.KerasChunkRunner(M.build_model(cfg), cfg)


def test_streaming_step_model_interface(tmp_path):
    cfg = make_cfg(tmp_path, lstm_layers=2)
    step = M.streaming_step_model(M.build_model(cfg), cfg)
    assert [tuple(i.shape) for i in step.inputs] == [(1, F, 4)] + [(1, 32)] * 4
    assert [tuple(o.shape) for o in step.outputs] == [(1, F, 2)] + [(1, 32)] * 4
    assert step.count_params() == M.build_model(cfg).count_params()  # the same layers, nothing new
    with pytest.raises(utils.PipelineError, match="causal"):
        bcfg = make_cfg(tmp_path, architecture="bidirectional")
        M.StreamingMask(M.build_model(bcfg), bcfg)


# ----------------------------------------------------------------------------- save / load, figures


@pytest.mark.parametrize("arch", ["causal", "bidirectional"])
def test_save_load_round_trip(tmp_path, rng, arch):
    cfg = make_cfg(tmp_path, architecture=arch, lookahead_frames=2, mask_bound=1.5)
    model = M.build_model(cfg)
    for w in model.trainable_weights:  # not the initial values: a rebuilt model would differ
        w.assign(w + 0.01 * rng.standard_normal(w.shape).astype(np.float32))
    folder = tmp_path / "trained"
    M.save_trained(model, cfg, folder)
    M.save_trained(model, cfg, folder)  # overwriting is fine and leaves no temp files
    assert sorted(p.name for p in folder.iterdir()) == ["config.ini", "model.weights.h5"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.ini", "model.weights.h5"):  # the usual mode, not mkstemp's 0600
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask
    loaded, loaded_cfg = M.load_trained(folder)
    assert loaded_cfg["model"]["mask_bound"] == "1.5"
    x = features(rng, 1, 10)
    np.testing.assert_array_equal(run(loaded, x), run(model, x))
    with pytest.raises(utils.PipelineError, match="not found"):
        M.load_trained(tmp_path / "missing")


def test_latency_and_macs(tmp_path):
    assert M.algorithmic_latency_ms(make_cfg(tmp_path)) == pytest.approx(25.0)
    assert M.algorithmic_latency_ms(make_cfg(tmp_path, lookahead_frames=3)) == pytest.approx(55.0)
    assert M.algorithmic_latency_ms(make_cfg(tmp_path, architecture="bidirectional")) == math.inf
    # tiny causal model: projection 4F*32, LSTM 4*32*(32+32), dense 32*32, output 32*2F
    expected = 4 * F * 32 + 4 * 32 * 64 + 32 * 32 + 32 * 2 * F
    assert M.count_macs_per_frame(make_cfg(tmp_path)) == expected


def test_summary_cli(tmp_path, capsys):
    path = write_config(tmp_path, {})
    assert M.main(["--summary", "--config", str(path), "--set", "model.lookahead_frames=2"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "45.0 ms" in out
    assert utils.run_main(M.main, ["--summary", "--config", str(path), "--set", "model.architecture=x"]) == 2
