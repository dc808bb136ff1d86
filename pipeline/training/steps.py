"""Pure compiled math: optimizers, losses, train/eval steps. No logging here.

The loop (`pipeline.training.loop`) decides when to log; these functions only compute
and return measurements, so logging can never slow down or change the math.
`make_train_loop` runs several steps per compiled call (Orbit's
`steps_per_loop`) and still returns every step's loss and accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from pipeline import data as data_lib
from pipeline import models
from pipeline.tensorboard.summaries import (
    HISTOGRAM_BUCKETS,
    histogram_buckets_stacked,
)

# Examples per batch of an evaluation (memory, not results: sums are exact).
EVAL_BATCH_SIZE = 1000
# What an evaluation reports per split, in this order.
EVAL_METRICS = ("loss", "accuracy")


def make_optimizer(
    name: str, learning_rate: float, momentum: float = 0.9, loss_scaling: bool = False
) -> keras.optimizers.Optimizer:
    """Builds the Keras optimizer a config names.

    With `loss_scaling` (mixed_float16) it is wrapped in Keras'
    `LossScaleOptimizer`: the train step scales the loss before taking
    gradients (`optimizer.scale_loss`), the wrapper unscales them, skips a step
    whose gradients overflowed and adapts the scale.
    """
    optimizers = {
        "sgd": lambda: keras.optimizers.SGD(learning_rate),
        "momentum": lambda: keras.optimizers.SGD(learning_rate, momentum=momentum),
        "adam": lambda: keras.optimizers.Adam(learning_rate),
        "adadelta": lambda: keras.optimizers.Adadelta(learning_rate),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate),
    }
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}")
    optimizer = optimizers[name]()
    if loss_scaling:
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def optimizer_trackables(optimizer: keras.optimizers.Optimizer) -> dict:
    """Checkpoint entries for `optimizer`, laid out alike at every precision.

    `optimizer` is always the plain optimizer (its slots are float32 under any
    policy); a loss-scaling wrapper adds only its scale and growth counter under
    `loss_scale`. A float16 checkpoint's optimizer therefore restores into a
    float32 or bfloat16 run and the other way round (the loss scale then
    starts from its initial value).
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return {
            "optimizer": optimizer.inner_optimizer,
            "loss_scale": {
                "dynamic_scale": optimizer.dynamic_scale,
                "step_counter": optimizer.step_counter,
            },
        }
    return {"optimizer": optimizer}


def per_example_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy per example: sigmoid for one logit, softmax otherwise."""
    if logits.shape[-1] == 1:
        return tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.float32), logits=logits[:, 0]
        )
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits
    )


def correct(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """1.0 where the prediction is right, else 0.0."""
    return tf.cast(
        tf.equal(models.predicted_class(logits), tf.cast(labels, tf.int32)), tf.float32
    )


def make_train_step(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    global_batch_size: int,
) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """Returns a per-replica step that updates `model` and reports loss/accuracy.

    Loss and accuracy are sums over this replica's examples divided by the
    global batch size; summed over replicas (the optimizer all-reduces the
    gradients, the loop reduces the metrics) they are global-batch means, so
    one device and N replicas compute the same update.

    `train_step.with_gradients` is the same step that also returns the
    gradients it applied (this replica's share, unscaled): the histograms'
    gradients come from training itself, not from a second pass.
    """

    def step_with_gradients(
        images: tf.Tensor, labels: tf.Tensor
    ) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(
                per_example_loss(labels, logits), global_batch_size=global_batch_size
            )
            # The identity unless the optimizer scales losses (mixed_float16).
            scaled_loss = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        applied = grads
        if scaled_loss is not loss:  # the scale this step used, before it adapts
            applied = [g / tf.identity(optimizer.dynamic_scale) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        accuracy = tf.reduce_sum(correct(labels, logits)) / global_batch_size
        return {"loss": loss, "accuracy": accuracy}, applied

    def train_step(images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        return step_with_gradients(images, labels)[0]

    train_step.with_gradients = step_with_gradients
    train_step.variables = model.trainable_variables
    return train_step


def make_train_loop(
    train_step: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]],
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = False,
    histograms: bool = True,
) -> Callable:
    """Compiles `train_loop(iterator, num_steps) -> {metric: [num_steps]}`.

    Each step runs `train_step` (from `make_train_step`) on every replica
    (`strategy.run`) and sums the per-replica metrics (`strategy.reduce`).
    `num_steps` is a tensor, so chunks of any length share one trace. The
    step is its own `tf.function` called from the loop, as Keras does for
    `steps_per_execution`: that keeps the step's graph optimisable on its own
    (measured 1.3x faster on logreg than inlining it into the while loop) and
    lets XLA compile the step, which it cannot do for a loop that reads a
    `tf.data` iterator (`IteratorGetNext` has no XLA kernel).

    `train_loop.with_histograms(iterator, num_steps)` runs the same steps and
    also returns `histograms`: the TensorBoard buckets of the trainable
    variables after the last step and of the gradients that step applied
    (summed over replicas), one `[weights + gradients, buckets, 3]` tensor,
    weights first. Both are one compiled function (`train_loop.compiled`),
    told by a boolean tensor: a second one, called for one chunk in five,
    paid ~1.5-2 ms a call for being cold (~1.5% of logreg's training). With
    `histograms=False` (no histograms written) the histogram step is left
    out until a chunk asks for it (an action's `Wants`; one more trace then):
    tracing it cost the first chunk of an MLP or CNN run 0.4-0.7 s.
    """
    strategy = strategy or tf.distribute.get_strategy()
    # No AutoGraph: it would only rewrite Keras' layer code (0.6-0.8 s of the
    # first chunk's tracing here); the loops are `tf.while_loop`s instead.
    step_fn = tf.function(train_step, jit_compile=jit_compile, autograph=False)
    gradient_fn = tf.function(
        train_step.with_gradients, jit_compile=jit_compile, autograph=False
    )
    run_steps = _make_step_runner(step_fn, strategy)
    built = {"histogram_step": histograms}  # read as `train_loop` traces
    # The switch, as tensors: both values share one trace.
    with_histograms, without = tf.constant(True), tf.constant(False)

    @tf.function(autograph=False)
    def train_loop(iterator, num_steps: tf.Tensor, histograms: tf.Tensor) -> dict:
        # A histogram chunk's last step runs after the loop, through the step
        # that also hands back its gradients (`last_step_with_histograms`).
        looped = num_steps - tf.cast(histograms, num_steps.dtype)
        losses, accuracies = run_steps(iterator, looped, *_metric_arrays(num_steps))
        last_step_with_histograms = _make_last_step_with_histograms(
            gradient_fn, train_step.variables, strategy, built["histogram_step"]
        )
        losses, accuracies, buckets = last_step_with_histograms(
            iterator, looped, num_steps, losses, accuracies
        )
        return {
            "loss": losses.stack(),
            "accuracy": accuracies.stack(),
            "histograms": buckets,
        }

    def loop_without_histograms(iterator, num_steps: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = loop_without_histograms.compiled(iterator, num_steps, without)
        del outputs["histograms"]
        return outputs

    def loop_with_histograms(iterator, num_steps: tf.Tensor) -> dict[str, tf.Tensor]:
        if not built["histogram_step"]:  # a fresh trace, used from now on
            built["histogram_step"] = True
            loop_without_histograms.compiled = tf.function(
                train_loop.python_function, autograph=False
            )
        return loop_without_histograms.compiled(iterator, num_steps, with_histograms)

    step_graph = _make_step_graph(step_fn, train_loop, strategy)
    loop_with_histograms.step_graph = step_graph
    loop_without_histograms.step_graph = step_graph
    loop_without_histograms.with_histograms = loop_with_histograms
    loop_without_histograms.compiled = train_loop
    loop_without_histograms.step_fn = step_fn  # for trace counts
    loop_without_histograms.gradient_fn = gradient_fn  # for trace counts
    loop_without_histograms.one_step = _make_one_step(step_fn, strategy)
    return loop_without_histograms


def _make_one_step(step_fn: Callable, strategy: tf.distribute.Strategy) -> Callable:
    """Compiles `one_step(iterator) -> {loss: [1], accuracy: [1]}`: one step,
    outside any compiled loop (for a profiled step).

    The profiler's Overview takes the iterations of a compiled while loop as
    the steps (xprof's `ProcessTensorFlowLoop`) and then finds none of the
    loop's step markers: "No step marker observed", 0.0 ms.
    """

    @tf.function(autograph=False)
    def one_step(iterator) -> dict[str, tf.Tensor]:
        per_replica = strategy.run(step_fn, args=next(iterator))
        metrics = _sum_over_replicas(per_replica, strategy)
        return {k: tf.reshape(metrics[k], [1]) for k in ("loss", "accuracy")}

    return one_step


def _sum_over_replicas(per_replica, strategy: tf.distribute.Strategy):
    """Sums every tensor in `per_replica` over the strategy's replicas."""
    return tf.nest.map_structure(
        lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None),
        per_replica,
    )


def _metric_arrays(num_steps: tf.Tensor) -> tuple[tf.TensorArray, tf.TensorArray]:
    """Empty per-step loss and accuracy arrays for a chunk of `num_steps`."""
    return (
        tf.TensorArray(tf.float32, size=num_steps),
        tf.TensorArray(tf.float32, size=num_steps),
    )


def _make_step_runner(step_fn: Callable, strategy: tf.distribute.Strategy):
    """`run_steps(iterator, num_steps, losses, accuracies)`: runs `step_fn` on
    the next `num_steps` batches, writing each step's summed metrics at its
    index (called inside a compiled loop).

    A `tf.while_loop`, not a `for` over `tf.range` for AutoGraph to rewrite:
    AutoGraph parses, transforms and writes out as a module (a file in the
    temporary directory) every function it converts, Keras' layer code
    included: 14 functions, ~0.7 s of CPU of a 20-step logreg process.
    """

    def run_steps(iterator, num_steps, losses, accuracies):
        def one_more(i, losses, accuracies):
            per_replica = strategy.run(step_fn, args=next(iterator))
            metrics = _sum_over_replicas(per_replica, strategy)
            return (
                i + 1,
                losses.write(i, metrics["loss"]),
                accuracies.write(i, metrics["accuracy"]),
            )

        _, losses, accuracies = tf.while_loop(
            lambda i, *_: i < num_steps,
            one_more,
            (tf.constant(0, num_steps.dtype), losses, accuracies),
        )
        return losses, accuracies

    return run_steps


def _make_step_graph(
    step_fn: Callable, train_loop: Callable, strategy: tf.distribute.Strategy
) -> Callable[..., tf.Graph]:
    """`step_graph(iterator)`: the graph of one training step, as the loop
    traced it (for TensorBoard)."""

    def step_graph(iterator) -> tf.Graph:
        """Under a distribution strategy the step runs per replica on
        per-replica inputs; the loop's own graph (the step is in its function
        library) is returned then."""
        default = strategy is tf.distribute.get_strategy()
        if default and not tf.distribute.has_strategy():
            return step_fn.get_concrete_function(*iterator.element_spec).graph
        return train_loop.get_concrete_function(
            iterator, tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.bool)
        ).graph

    return step_graph


def _make_last_step_with_histograms(
    gradient_fn: Callable,
    variables: list,
    strategy: tf.distribute.Strategy,
    enabled: bool = True,
) -> Callable:
    """`last_step(iterator, step, end, losses, accuracies) -> (losses,
    accuracies, histograms)`, inside the compiled loop: when `step < end`
    (one step is left: a histogram chunk's), it runs that step through
    `train_step.with_gradients`, writes its metrics at index `step`, and
    buckets (`histogram_buckets_stacked`) the variables after it and the
    gradients it applied, weights first; otherwise it returns zeros.

    A `tf.while_loop` of at most one iteration rather than a `tf.cond`:
    `MirroredStrategy.run` inside a `cond` branch leaves the branch's
    captured inputs unfed ("You must feed a value for placeholder tensor
    'cond/then/.../Placeholder'"), inside a loop body it works, as in
    `_make_step_runner`. The buckets are computed in the same call, only
    they leave it: no second gradient pass, nothing read from live variables
    afterwards, and a few fused ops where the writer thread's separate
    compiled call cost an MLP's 44 histograms ~3 ms of CPU beside training.
    Not `enabled`, it hands the arrays back with no histograms and traces
    nothing of the step.
    """
    count = 2 * len(variables)
    if not enabled:
        return lambda iterator, step, end, losses, accuracies: (
            losses,
            accuracies,
            tf.zeros([count, HISTOGRAM_BUCKETS, 3], tf.float64),
        )

    def last_step(iterator, step, end, losses, accuracies):
        def one_with_gradients(i, losses, accuracies, _):
            per_replica = strategy.run(gradient_fn, args=next(iterator))
            metrics, grads = _sum_over_replicas(per_replica, strategy)
            weights = [tf.identity(v) for v in variables]
            return (
                i + 1,
                losses.write(i, metrics["loss"]),
                accuracies.write(i, metrics["accuracy"]),
                histogram_buckets_stacked([*weights, *grads]),
            )

        _, losses, accuracies, buckets = tf.while_loop(
            lambda i, *_: i < end,
            one_with_gradients,
            (
                step,
                losses,
                accuracies,
                tf.zeros([count, HISTOGRAM_BUCKETS, 3], tf.float64),
            ),
        )
        return losses, accuracies, buckets

    return last_step


def model_logits(
    model: keras.Model, images: tf.Tensor, input_scale: str = "unit"
) -> tf.Tensor:
    """Logits for uint8 [N, 28, 28] images: the one way pixels reach a model
    outside training (evaluation, `pipeline-predict`, the exported SavedModel).
    `input_scale` is the run's `--input_scale`, as training fed the model."""
    return model(data_lib.model_input(images, input_scale), training=False)


def make_eval_fn(
    model: keras.Model,
    batch_size: int = EVAL_BATCH_SIZE,
    input_scale: str = "unit",
    with_logits: bool = False,
) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """Compiles `evaluate(images, labels) -> {loss, accuracy, count[, logits]}`.

    The one evaluation of a split, shared by training's periodic evaluation
    and `pipeline-eval`. Sums per-example loss and correctness over every
    batch (the last, partial one included), so `loss` and `accuracy` are the
    exact means over the split; with `with_logits` (pipeline-eval, not the
    periodic evaluation, which keeps only the means) also `logits`, float32
    [N, classes] in the split's order. Slices uint8 `[N, 28, 28]` images that
    stay in memory and turns each batch into the model's input in the graph: no tf.data
    iterator, prefetch threads or per-call pipeline start-up, which made a
    periodic test evaluation cost 3-10x more than its arithmetic for small
    models. One trace serves every split (`[None, 28, 28]` signature).
    """
    classes = model.output_shape[-1]

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 28, 28], tf.uint8),
            tf.TensorSpec([None], tf.int32),
        ],
        # Batches in a `tf.while_loop`: nothing for AutoGraph to convert but
        # Keras' layer code (`_make_step_runner` says what that cost).
        autograph=False,
    )
    def evaluate(images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        count = tf.shape(labels)[0]

        def one_more_batch(start, total_loss, total_correct, all_logits):
            batch_labels = labels[start : start + batch_size]
            logits = model_logits(
                model, images[start : start + batch_size], input_scale
            )
            total_loss += tf.reduce_sum(
                tf.cast(per_example_loss(batch_labels, logits), tf.float64)
            )
            total_correct += tf.reduce_sum(
                tf.cast(correct(batch_labels, logits), tf.float64)
            )
            if with_logits:
                all_logits = all_logits.write(
                    start // batch_size, tf.cast(logits, tf.float32)
                )
            return start + batch_size, total_loss, total_correct, all_logits

        _, total_loss, total_correct, all_logits = tf.while_loop(
            lambda start, *_: start < count,
            one_more_batch,
            (
                tf.constant(0),
                tf.constant(0.0, tf.float64),
                tf.constant(0.0, tf.float64),
                tf.TensorArray(
                    tf.float32, size=0, dynamic_size=True, element_shape=[None, classes]
                ),
            ),
        )
        n = tf.cast(count, tf.float64)
        metrics = {"loss": total_loss / n, "accuracy": total_correct / n, "count": n}
        if with_logits:
            metrics["logits"] = all_logits.concat()
        return metrics

    return evaluate
