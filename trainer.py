"""The model, its optimizer and the distributed train step (tf.function + GradientTape + Adam), and the
tf.distribute strategy it runs under.

The step computes the features in-graph from the noisy STFT, clips the gradient by its global norm and
skips the update when the loss is not finite; it counts itself in the same graph call (exact resume).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import cluster
import spectral
import spectral_tf
import utils
from train_settings import TrainParams
from training_data import learning_rate_schedule

log = utils.get_logger("train")

STRATEGIES = ("default", "mirrored", "multiworker")


def seed_everything(seed: int, deterministic: bool | str) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras; [train] deterministic turns on TF op determinism."""
    tf = utils.import_tensorflow()
    import keras

    utils.set_seed(seed)
    tf.random.set_seed(seed)
    keras.utils.set_random_seed(seed)
    if str(deterministic).lower() == "auto":
        deterministic = not tf.config.list_physical_devices("GPU")
    if str(deterministic).lower() in ("true", "1"):
        tf.config.experimental.enable_op_determinism()


def make_strategy(name):
    """default: tf.distribute.get_strategy(); mirrored: every GPU, else every logical CPU device;
    multiworker: MultiWorkerMirroredStrategy (cluster from TF_CONFIG). A Strategy object passes."""
    tf = utils.import_tensorflow()
    if not isinstance(name, str):
        return name
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in STRATEGIES:
        raise utils.PipelineError(f"--strategy {name!r}: choose from {', '.join(STRATEGIES)}")
    # One instance per process: two strategies over the same devices would reuse collective keys.
    if name not in _STRATEGY_CACHE:
        if name == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            _STRATEGY_CACHE[name] = tf.distribute.MirroredStrategy(devices=devices)
        else:
            cluster.configure_coordination(tf)  # bounded waits for a worker that is gone
            _STRATEGY_CACHE[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGY_CACHE[name]


_STRATEGY_CACHE: dict = {}


def is_chief(strategy) -> bool:
    """Only the chief writes summaries, exports and the real checkpoints (multi-worker rule)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


class Trainer:
    """Model, optimizer, the distributed train step and whole-utterance inference."""

    def __init__(self, cfg, params: TrainParams, strategy):
        import model as model_lib

        tf = utils.import_tensorflow()
        self.tf, self.cfg, self.params, self.strategy = tf, cfg, params, strategy
        self.model_lib = model_lib
        self.sp = spectral.StftParams.from_config(cfg)
        self.fp = spectral.FeatureParams.from_config(cfg)
        self.loss_fn = model_lib.loss_from_config(cfg)  # callable(S, S_hat, mask=None)
        with strategy.scope():
            self.model = model_lib.build_model(cfg)
            import keras

            self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate_schedule(params))
            self.optimizer.build(self.model.trainable_variables)
        # Training state saved in every checkpoint (data order = f(seed, epoch, batch)).
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.batch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch_loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
        self.epoch_loss_count = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_loss_count")
        self.nonfinite_streak = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite_streak")
        self.best_si_sdr = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_si_sdr")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            batch=self.batch,
            step=self.step,
            epoch_loss_sum=self.epoch_loss_sum,
            epoch_loss_count=self.epoch_loss_count,
            nonfinite_streak=self.nonfinite_streak,
            best_si_sdr=self.best_si_sdr,
        )
        self._step_fn = tf.function(self._step, reduce_retracing=True, autograph=False)
        f = self.sp.n_bins
        spec = tf.TensorSpec([None, None, f], tf.complex64)
        self.infer = tf.function(self._infer, input_signature=[spec, spec], autograph=False)

    def load_initial_weights(self, path: Path) -> None:
        """[train] init_weights: the starting point of a new run (fine-tuning); the optimizer and the
        step counter start afresh."""
        if not path.is_file():
            raise utils.PipelineError(f"{path}: [train] init_weights: file not found")
        try:
            self.model.load_weights(str(path))
        except Exception as e:  # Keras raises ValueError / OSError for another model or a bad file
            raise utils.PipelineError(
                f"{path}: [train] init_weights: cannot load into this [model] "
                f"({str(e).splitlines()[0][:160]})"
            ) from e
        log.info(f"initial weights: {path}")

    # -- the train step ------------------------------------------------------------------------
    def features(self, X):
        return spectral_tf.features_tf(X, self.fp, self.sp)

    def forward(self, noisy, training: bool):
        mask = self.model(self.features(noisy), training=training)
        return self.model_lib.apply_mask(noisy, mask), mask

    def _replica_grads(self, noisy, clean, valid):
        """The batch loss is the model loss averaged over every valid (frame, bin) of the GLOBAL batch
        (padding excluded). A replica's share: its masked mean times its fraction of the global valid
        frames. Loss and gradients are then all-reduced, so every replica holds the full-batch values,
        identical to one replica on the whole batch."""
        tf = self.tf
        ctx = tf.distribute.get_replica_context()
        local = tf.reduce_sum(valid)
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            S_hat, _ = self.forward(noisy, training=True)
            loss = self.loss_fn(clean, S_hat, mask=valid) * (local / tf.maximum(total, 1.0))
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, variables)]
        loss, grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [loss, grads])
        return loss, grads

    def _replica_apply(self, grads, norm):
        tf = self.tf
        if self.params.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.params.clip_norm, use_norm=norm)
        replicas = self.strategy.num_replicas_in_sync
        if replicas > 1:  # the optimizer sums over replicas again: hand it 1/R of the full gradient
            grads = [g / replicas for g in grads]
        self.optimizer.apply(grads, self.model.trainable_variables)

    def _step(self, noisy, clean, valid):
        tf, strategy = self.tf, self.strategy
        loss, grads = strategy.run(self._replica_grads, args=(noisy, clean, valid))
        first = strategy.experimental_local_results
        loss = first(loss)[0]
        norm = tf.linalg.global_norm([first(g)[0] for g in grads])
        finite = tf.math.logical_and(tf.math.is_finite(loss), tf.math.is_finite(norm))

        def apply():
            # In cross-replica context: a cond whose branch calls merge_call must live here.
            strategy.run(self._replica_apply, args=(grads, norm))
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        self._count_step(loss, applied)
        return loss, norm, applied

    def _count_step(self, loss, applied):
        """Counts the step in the same graph call as the update: Ctrl-C lands before or after both,
        never between (new weights saved with the old counter would replay the batch on --resume)."""
        tf = self.tf
        self.step.assign_add(1)
        self.batch.assign_add(1)
        self.nonfinite_streak.assign(tf.where(applied, tf.constant(0, tf.int64), self.nonfinite_streak + 1))
        self.epoch_loss_sum.assign_add(
            tf.where(applied, tf.cast(loss, tf.float64), tf.constant(0.0, tf.float64))
        )
        self.epoch_loss_count.assign_add(tf.cast(applied, tf.int64))

    def _gradients(self, noisy, clean, valid):
        loss, grads = self.strategy.run(self._replica_grads, args=(noisy, clean, valid))
        first = self.strategy.experimental_local_results
        grads = [first(g)[0] for g in grads]
        return first(loss)[0], self.tf.linalg.global_norm(grads), grads

    def gradients(self, batch):
        """(loss, global grad norm, [grad arrays]) of the full batch, unclipped, nothing applied."""
        if not hasattr(self, "_gradients_fn"):
            self._gradients_fn = self.tf.function(self._gradients, reduce_retracing=True, autograph=False)
        loss, norm, grads = self._gradients_fn(*batch)
        return float(loss), float(norm), [g.numpy() for g in grads]

    def train_step(self, batch):
        """One update on a (noisy, clean, valid) batch (distributed when the strategy has replicas) and
        the step / batch / epoch-loss counters; returns (loss, grad_norm, applied) as Python values;
        a non-finite loss applies nothing."""
        loss, norm, applied = self._step_fn(*batch)
        return float(loss), float(norm), bool(applied)

    # -- inference ------------------------------------------------------------------------------
    def _infer(self, noisy, clean):
        tf = self.tf
        S_hat, mask = self.forward(noisy, training=False)
        n = tf.shape(clean)[1]
        losses = tf.map_fn(
            lambda i: self.loss_fn(clean[i : i + 1], S_hat[i : i + 1, :n]),
            tf.range(tf.shape(noisy)[0]),
            fn_output_signature=tf.float32,
        )
        return S_hat, mask, losses

    def enhance(self, noisy: np.ndarray, clean: np.ndarray):
        """Whole utterances of one length, noisy (B, T', F) and clean (B, T <= T', F) -> S_hat (B, T', F),
        mask (B, T', F, 2), losses (B,) over the first T frames.

        No padding: equal lengths make a batch exact for every architecture (a padded batch would
        change what a bidirectional model or a lookahead sees at the end)."""
        S_hat, mask, losses = self.infer(noisy, clean)
        return S_hat.numpy(), mask.numpy(), losses.numpy()

    def weights(self) -> list[np.ndarray]:
        return [np.array(v) for v in self.model.weights]
