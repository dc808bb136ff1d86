"""Which Keras mixed-precision policy a run uses, and why.

`--precision` names a Keras dtype policy (`float32`, `mixed_bfloat16`,
`mixed_float16`) or `auto`. Under a mixed policy the hidden layers compute in
16 bits while their variables, the optimizer state, the output layer (logits),
the loss, the metrics and every summary stay float32 (`apply_policy`).
`mixed_float16` also needs loss scaling (`keras.optimizers.LossScaleOptimizer`,
see `pipeline.training.steps`); bfloat16 has float32's exponent range and
needs none.

`auto` picks what measurably wins on the machine it runs on: bfloat16 where the
hardware computes it natively (a GPU of compute capability 8.0 or newer, or a
CPU that reports `avx512_bf16` or `amx_bf16` in /proc/cpuinfo) and only for the
model families whose training bfloat16 made faster at equal accuracy in
`benchmarks/throughput.py` (`config.BF16_AUTO_MODELS`); float32 everywhere else. A
resolved policy is a pure function of the flag, the model family and the
hardware, so a run's numbers stay deterministic for a given machine.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import tensorflow as tf

from pipeline.config import BF16_AUTO_MODELS, PRECISIONS
from pipeline.runs import provenance

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved `--precision`: the Keras policy name and why it was chosen."""

    requested: str
    policy: str
    reason: str

    @property
    def compute_dtype(self) -> str:
        return {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(
            self.policy, "float32"
        )

    @property
    def loss_scaling(self) -> bool:
        """float16's narrow exponent range needs a scaled loss; bfloat16's does not."""
        return self.policy == "mixed_float16"

    def describe(self) -> str:
        """One line for the model summary and the console."""
        if self.policy == "float32":
            return f"precision: float32 ({self.reason})"
        return (
            f"precision: {self.policy} ({self.reason}): hidden layers compute in "
            f"{self.compute_dtype}; variables, optimizer state, logits, loss and "
            "summaries float32"
            + ("; dynamic loss scaling" if self.loss_scaling else "")
        )

    def as_record(self) -> dict[str, str]:
        """What run.json keeps under `precision`."""
        return {
            "requested": self.requested,
            "policy": self.policy,
            "reason": self.reason,
        }


@functools.cache
def cpu_bf16_flag(cpuinfo: pathlib.Path = provenance.CPUINFO) -> str | None:
    """The CPU flag that says the cores compute bfloat16 natively, if any.

    Read by `provenance.cpu_info`, the one reader of /proc/cpuinfo (a run
    records the same flags).
    """
    present = provenance.cpu_info(cpuinfo)["kernel_flags"]
    return next((flag for flag in CPU_BF16_FLAGS if flag in present), None)


@functools.cache
def gpu_bf16() -> str | None:
    """'GPU <name> (compute capability X.Y)' when the first GPU has bfloat16."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = details.get("compute_capability")
    if capability and tuple(capability) >= (8, 0):
        name = details.get("device_name", "GPU")
        return f"{name} (compute capability {capability[0]}.{capability[1]})"
    return None


def resolve(requested: str, model: str) -> Precision:
    """Turns `--precision` (maybe `auto`) into the policy a run uses."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}")
    if requested != "auto":
        return Precision(requested, requested, "--precision")
    if model not in BF16_AUTO_MODELS:
        return Precision(
            requested,
            "float32",
            f"auto: bfloat16 measured no faster for {model} (only "
            + ", ".join(BF16_AUTO_MODELS)
            + ")",
        )
    gpu = gpu_bf16()
    if gpu:
        return Precision(requested, "mixed_bfloat16", f"auto: {gpu} has bfloat16")
    if not tf.config.list_physical_devices("GPU"):
        flag = cpu_bf16_flag()
        if flag:
            return Precision(requested, "mixed_bfloat16", f"auto: CPU has {flag}")
    return Precision(requested, "float32", "auto: no native bfloat16 on this device")


def apply_policy(model, policy: str):
    """Gives every layer before the output layer the Keras dtype `policy`.

    The output layer (the logits) keeps float32, so the loss, metrics and
    probabilities are computed from float32 logits. Keras creates variables in
    the policy's variable dtype, float32 for every policy here, so setting the
    policy after the float32 build changes only what the layers compute in. A
    model whose only weighted layer is the output (logistic regression) is
    left as it is: nothing in it would compute in 16 bits, only casts would be
    added.
    """
    if policy == "float32":
        return model
    *hidden, output = model.layers
    if not any(layer.weights for layer in hidden):
        return model
    for layer in hidden:
        layer.dtype_policy = policy
    del output  # stays float32
    return model
