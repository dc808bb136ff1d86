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

# Examples per batch of an evaluation (memory, not results: sums are exact).
EVAL_BATCH_SIZE = 1000
# What an evaluation reports per split, in this order.
EVAL_METRICS = ("loss", "accuracy")


def make_optimizer(
    name: str, learning_rate: float, momentum: float = 0.9
) -> keras.optimizers.Optimizer:
    """Builds the Keras optimizer a config names."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}")


def per_example_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy per example: sigmoid for one logit, softmax otherwise."""
    if logits.shape[-1] == 1:
        return tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.float32), logits=logits[:, 0]
        )
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits
    )


def predicted_class(logits: tf.Tensor) -> tf.Tensor:
    """Class index per example (threshold 0 on a single logit = p > 0.5)."""
    if logits.shape[-1] == 1:
        return tf.cast(logits[:, 0] > 0, tf.int32)
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


def correct(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """1.0 where the prediction is right, else 0.0."""
    return tf.cast(
        tf.equal(predicted_class(logits), tf.cast(labels, tf.int32)), tf.float32
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
    """

    def train_step(images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.nn.compute_average_loss(
                per_example_loss(labels, logits), global_batch_size=global_batch_size
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        accuracy = tf.reduce_sum(correct(labels, logits)) / global_batch_size
        return {"loss": loss, "accuracy": accuracy}

    return train_step


def make_train_loop(
    train_step: Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]],
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = False,
) -> Callable:
    """Compiles `train_loop(iterator, num_steps) -> {metric: [num_steps]}`.

    Each step runs `train_step` on every replica (`strategy.run`) and sums the
    per-replica metrics (`strategy.reduce`); under the default strategy both
    are no-ops. `num_steps` is a tensor, so chunks of any length share one
    trace. The step is its own `tf.function` called from the loop, as Keras
    does for `steps_per_execution`: that keeps the step's graph optimisable on
    its own (measured 1.3x faster on logreg than inlining it into the while
    loop) and lets XLA compile the step, which it cannot do for a loop that
    reads a `tf.data` iterator (`IteratorGetNext` has no XLA kernel).
    """
    strategy = strategy or tf.distribute.get_strategy()
    step_fn = tf.function(train_step, jit_compile=jit_compile)

    @tf.function
    def train_loop(iterator, num_steps: tf.Tensor) -> dict[str, tf.Tensor]:
        losses = tf.TensorArray(tf.float32, size=num_steps)
        accuracies = tf.TensorArray(tf.float32, size=num_steps)
        for i in tf.range(num_steps):
            per_replica = strategy.run(step_fn, args=next(iterator))
            metrics = {
                k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()
            }
            losses = losses.write(i, metrics["loss"])
            accuracies = accuracies.write(i, metrics["accuracy"])
        return {"loss": losses.stack(), "accuracy": accuracies.stack()}

    train_loop.step_fn = step_fn  # for trace counts
    return train_loop


def model_logits(
    model: keras.Model, images: tf.Tensor, input_scale: str = "unit"
) -> tf.Tensor:
    """Logits for uint8 [N, 28, 28] images: the one way pixels reach a model
    outside training (evaluation, `pipeline-predict`, the exported SavedModel).
    `input_scale` is the run's `--input_scale`, as training fed the model."""
    return model(data_lib.model_input(images, input_scale), training=False)


def make_eval_fn(
    model: keras.Model, batch_size: int = EVAL_BATCH_SIZE, input_scale: str = "unit"
) -> Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """Compiles `evaluate(images, labels) -> {loss, accuracy, count, logits}`.

    The one evaluation of a split, shared by training's periodic evaluation
    and `pipeline-eval`. Sums per-example loss and correctness over every
    batch (the last, partial one included), so `loss` and `accuracy` are the
    exact means over the split; `logits` are float32 [N, classes] in the
    split's order. Slices uint8 `[N, 28, 28]` images that stay in memory and
    turns each batch into the model's input in the graph: no tf.data
    iterator, prefetch threads or per-call pipeline start-up, which made a
    periodic test evaluation cost 3-10x more than its arithmetic for small
    models. One trace serves every split (`[None, 28, 28]` signature).
    """
    classes = model.output_shape[-1]

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 28, 28], tf.uint8),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def evaluate(images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        total_loss = tf.constant(0.0, tf.float64)
        total_correct = tf.constant(0.0, tf.float64)
        all_logits = tf.TensorArray(
            tf.float32, size=0, dynamic_size=True, element_shape=[None, classes]
        )
        count = tf.shape(labels)[0]
        for start in tf.range(0, count, batch_size):
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
            all_logits = all_logits.write(
                start // batch_size, tf.cast(logits, tf.float32)
            )
        n = tf.cast(count, tf.float64)
        return {
            "loss": total_loss / n,
            "accuracy": total_correct / n,
            "count": n,
            "logits": all_logits.concat(),
        }

    return evaluate


def make_gradient_fn(
    model: keras.Model,
) -> Callable[[tf.Tensor, tf.Tensor], list[tf.Tensor]]:
    """Compiles a function returning the gradients of one batch (for histograms).

    Kept out of the train step: histograms run every N steps through this
    function, never through a per-step conditional in the hot loop.
    """

    @tf.function
    def gradients(images: tf.Tensor, labels: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = model(images, training=False)
            loss = tf.reduce_mean(per_example_loss(labels, logits))
        return tape.gradient(loss, model.trainable_variables)

    return gradients
