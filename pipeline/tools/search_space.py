"""A sweep's search space: training flags and the values a study may give them.

Two ways to write an axis, both turned into Optuna distributions:

  --search=learning_rate=log:1e-4:1e-1     log-uniform float in [A, B]
  --search=dropout=float:0:0.5             uniform float in [A, B]
  --search=hidden_layers=int:1:10          integer in [A, B] (`int:A:B:STEP` too)
  --search=activation=choice:relu,tanh     one of the values (`A,B|C,D` for list flags)
  --grid=learning_rate=0.1,0.01            the grid form: a choice axis

Choices keep the text as typed, so a grid point's overrides (and with them the
run names of a grid sweep) are exactly what they were before studies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna import distributions

from pipeline import config as config_lib
from pipeline.tools import sweep

KINDS = ("log", "float", "int", "choice")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One searched flag: its distribution and the spec text it came from."""

    flag: str
    spec: str
    distribution: distributions.BaseDistribution
    option: str = "--search"

    @property
    def is_choice(self) -> bool:
        return isinstance(self.distribution, distributions.CategoricalDistribution)

    @property
    def choices(self) -> tuple[str, ...]:
        assert isinstance(self.distribution, distributions.CategoricalDistribution)
        return tuple(str(c) for c in self.distribution.choices)


def _number(text: str, spec: str, kind: str) -> float:
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        want = "an integer" if kind == "int" else "a number"
        raise sweep.SweepError(f"--search={spec}: {text!r} is not {want}") from None
    if not math.isfinite(value):
        raise sweep.SweepError(f"--search={spec}: {text!r} is not finite")
    return value


def _range(spec: str, kind: str, parts: list[str]) -> distributions.BaseDistribution:
    usage = f"{kind}:LOW:HIGH" + (" or int:LOW:HIGH:STEP" if kind == "int" else "")
    if len(parts) not in ((2, 3) if kind == "int" else (2,)):
        raise sweep.SweepError(f"--search={spec}: expected {usage}")
    low, high = (_number(p, spec, kind) for p in parts[:2])
    if not low < high:
        raise sweep.SweepError(f"--search={spec}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise sweep.SweepError(f"--search={spec}: log ranges need LOW > 0")
    if kind == "int":
        step = int(_number(parts[2], spec, kind)) if len(parts) == 3 else 1
        if step < 1:
            raise sweep.SweepError(f"--search={spec}: STEP must be >= 1")
        return distributions.IntDistribution(int(low), int(high), step=step)
    return distributions.FloatDistribution(low, high, log=kind == "log")


def _check_flag(flag: str, spec: str, option: str, seen: Sequence[Axis]) -> None:
    # parse_grid knows the training flags; reuse its check and its wording.
    try:
        sweep.parse_grid([f"{flag}=x"])
    except sweep.SweepError:
        raise sweep.SweepError(
            f"{option}={spec}: {flag!r} is not a training flag"
        ) from None
    if any(axis.flag == flag for axis in seen):
        raise sweep.SweepError(f"{option}={spec}: {flag} is already searched")


def parse_search(specs: Sequence[str], seen: Sequence[Axis] = ()) -> list[Axis]:
    """Parses `--search=FLAG=KIND:...` values (see the module docstring).

    Raises:
      SweepError: one line naming the spec: malformed, an unknown flag or
        kind, LOW >= HIGH, a log range from <= 0, a flag searched twice.
    """
    axes = list(seen)
    for spec in specs:
        flag, sep, rest = spec.partition("=")
        flag = flag.strip().lstrip("-")
        kind, colon, values = rest.partition(":")
        if not sep or not flag or not colon:
            raise sweep.SweepError(
                f"--search={spec}: expected FLAG=KIND:..., KIND one of "
                + ", ".join(KINDS)
            )
        _check_flag(flag, spec, "--search", axes)
        if kind == "choice":
            (grid_axis,) = _grid_axes([f"{flag}={values}"], spec)
            axes.append(Axis(flag, rest, _categorical(grid_axis.values)))
        elif kind in KINDS:
            axes.append(Axis(flag, rest, _range(spec, kind, values.split(":"))))
        else:
            raise sweep.SweepError(
                f"--search={spec}: unknown kind {kind!r} (one of {', '.join(KINDS)})"
            )
    return axes[len(seen) :]


def _grid_axes(specs: Sequence[str], spec: str) -> list[sweep.GridAxis]:
    try:
        return sweep.parse_grid(specs)
    except sweep.SweepError as err:
        reason = str(err).split(": ", 1)[-1]
        raise sweep.SweepError(f"--search={spec}: {reason}") from None


def _categorical(values: Sequence[str]) -> distributions.CategoricalDistribution:
    return distributions.CategoricalDistribution(list(values))


def from_grid(axes: Sequence[sweep.GridAxis]) -> list[Axis]:
    """`--grid` axes as choice axes (their values kept as typed)."""
    return [
        Axis(a.flag, "choice:" + _join(a.values), _categorical(a.values), "--grid")
        for a in axes
    ]


def _join(values: Sequence[str]) -> str:
    return ("|" if any("," in v for v in values) else ",").join(values)


def value_text(value: Any) -> str:
    """A sampled value as flag text: `0.0123`, `3`, `relu`."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def overrides(
    axes: Sequence[Axis], params: Mapping[str, Any]
) -> tuple[tuple[str, str], ...]:
    """A trial's (flag, text) overrides, in the axes' order."""
    return tuple((axis.flag, value_text(params[axis.flag])) for axis in axes)


def check_against_flags(base: config_lib.TrainConfig, axes: Sequence[Axis]) -> None:
    """Resolves every choice and both ends of every range with the base flags.

    So a value the flag itself refuses (`activation=choice:relu,swiggle`,
    `hidden_layers=int:0:500` past its bound) fails before any trial.

    Raises:
      SweepError: naming the axis and the flag's own message.
    """
    for axis in axes:
        dist = axis.distribution
        if axis.is_choice:
            values = axis.choices
        else:
            values = (value_text(dist.low), value_text(dist.high))  # type: ignore[attr-defined]
        for value in values:
            try:
                sweep.resolve(base, [(axis.flag, value)], base.seed)
            except sweep.SweepError as err:
                if axis.option == "--grid":
                    raise  # already `--grid (FLAG=VALUE): ...`
                reason = str(err).split(": ", 1)[-1]
                raise sweep.SweepError(
                    f"--search={axis.flag}={axis.spec}: {reason}"
                ) from None


def describe(axes: Sequence[Axis]) -> dict[str, str]:
    """{flag: spec}: how a study records its space, to check a worker joins the same."""
    return {axis.flag: axis.spec for axis in axes}


def grid_size(axes: Sequence[Axis]) -> int:
    """The number of grid points.

    Raises:
      SweepError: an axis is a range (a grid needs choices).
    """
    for axis in axes:
        if not axis.is_choice:
            raise sweep.SweepError(
                f"--sampler=grid: --search={axis.flag}={axis.spec} is a range; "
                "a grid needs choice:... values (or --grid)"
            )
    return math.prod(len(axis.choices) for axis in axes)
