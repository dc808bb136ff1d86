"""The searched flags: one `Axis` (a training flag and its Optuna distribution)
per `--grid` or `--search` argument.

  --grid=learning_rate=0.1,0.01            a choice (`A,B|C,D` for list flags)
  --search=learning_rate=log:1e-4:1e-1     log-uniform float in [A, B]
  --search=dropout=float:0:0.5             uniform float in [A, B]
  --search=hidden_layers=int:1:10          integer in [A, B] (`int:A:B:STEP` too)
  --search=activation=choice:relu,tanh     a choice, like --grid

Choices keep the text as typed, so a grid point's run names are the ones grid
sweeps always had.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags
from optuna import distributions

from pipeline import config as config_lib
from pipeline.errors import ConfigError
from pipeline.runs.rundir import config_to_flagfile
from pipeline.sweep import SweepError

KINDS = ("log", "float", "int", "choice")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One searched flag: its distribution, the spec it came from, the option."""

    flag: str
    spec: str
    distribution: distributions.BaseDistribution
    option: str = "--search"

    @property
    def is_choice(self) -> bool:
        return isinstance(self.distribution, distributions.CategoricalDistribution)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.distribution.choices)  # type: ignore[attr-defined]


def _flag(spec: str, option: str, seen: Sequence[Axis], usage: str) -> tuple[str, str]:
    """(flag, the text after `FLAG=`), the flag checked to be a training flag."""
    flag, sep, rest = spec.partition("=")
    flag = flag.strip().lstrip("-")
    if not sep or not flag or not rest.strip():
        raise SweepError(f"{option}={spec}: expected {usage}")
    if flag not in config_lib.FIELDS_BY_NAME or flag in config_lib.LOCATION_FLAGS:
        raise SweepError(f"{option}={spec}: {flag!r} is not a training flag")
    if any(axis.flag == flag for axis in seen):
        again = "a grid axis" if option == "--grid" else "searched"
        raise SweepError(f"{option}={spec}: {flag} is already {again}")
    return flag, rest


def _choices(text: str, where: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split("|" if "|" in text else ","))
    if any(not v for v in values):
        raise SweepError(f"{where}: empty value")
    if len(set(values)) != len(values):
        raise SweepError(f"{where}: repeated value")
    return values


def _choice_axis(flag: str, values: tuple[str, ...], option: str) -> Axis:
    joined = ("|" if any("," in v for v in values) else ",").join(values)
    return Axis(
        flag,
        "choice:" + joined,
        distributions.CategoricalDistribution(list(values)),
        option,
    )


def parse_grid(specs: Sequence[str]) -> list[Axis]:
    """`--grid=FLAG=V1,V2,...` values as choice axes.

    Raises:
      SweepError: naming the spec: malformed, not a training flag, a flag
        given twice, an empty or repeated value.
    """
    axes: list[Axis] = []
    for spec in specs:
        flag, rest = _flag(spec, "--grid", axes, "FLAG=VALUE1,VALUE2,...")
        axes.append(_choice_axis(flag, _choices(rest, f"--grid={spec}"), "--grid"))
    return axes


def _number(text: str, spec: str, kind: str) -> float:
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        want = "an integer" if kind == "int" else "a number"
        raise SweepError(f"--search={spec}: {text!r} is not {want}") from None
    if not math.isfinite(value):
        raise SweepError(f"--search={spec}: {text!r} is not finite")
    return value


def _range(spec: str, kind: str, parts: list[str]) -> distributions.BaseDistribution:
    usage = f"{kind}:LOW:HIGH" + (" or int:LOW:HIGH:STEP" if kind == "int" else "")
    if len(parts) not in ((2, 3) if kind == "int" else (2,)):
        raise SweepError(f"--search={spec}: expected {usage}")
    low, high = (_number(p, spec, kind) for p in parts[:2])
    if not low < high:
        raise SweepError(f"--search={spec}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise SweepError(f"--search={spec}: log ranges need LOW > 0")
    if kind == "int":
        step = int(_number(parts[2], spec, kind)) if len(parts) == 3 else 1
        if step < 1:
            raise SweepError(f"--search={spec}: STEP must be >= 1")
        return distributions.IntDistribution(int(low), int(high), step=step)
    return distributions.FloatDistribution(low, high, log=kind == "log")


def parse_search(specs: Sequence[str], seen: Sequence[Axis] = ()) -> list[Axis]:
    """`--search=FLAG=KIND:...` values as axes (see the module docstring).

    Raises:
      SweepError: one line naming the spec: malformed, an unknown flag or
        kind, LOW >= HIGH, a log range from <= 0, a flag searched twice.
    """
    usage = f"FLAG=KIND:..., KIND one of {', '.join(KINDS)}"
    axes = list(seen)
    for spec in specs:
        flag, rest = _flag(spec, "--search", axes, usage)
        kind, colon, values = rest.partition(":")
        if not colon:
            raise SweepError(f"--search={spec}: expected {usage}")
        if kind == "choice":
            choices = _choices(values, f"--search={spec}")
            axis = _choice_axis(flag, choices, "--search")
            axes.append(dataclasses.replace(axis, spec=rest))
        elif kind in KINDS:
            axes.append(Axis(flag, rest, _range(spec, kind, values.split(":"))))
        else:
            raise SweepError(
                f"--search={spec}: unknown kind {kind!r} (one of {', '.join(KINDS)})"
            )
    return axes[len(seen) :]


def check_repeats(axes: Sequence[Axis], repeats: int) -> None:
    """Refuses `seed` as an axis together with `--repeats` (both set the seed)."""
    if repeats > 1 and any(axis.flag == "seed" for axis in axes):
        raise SweepError("--grid=seed=... and --repeats>1 both set the seed; use one")


def check_last_seed(base: config_lib.TrainConfig, repeats: int) -> None:
    """Resolves the last repeat's seed (SEED + repeats - 1) with the flag's own
    bounds, so `--seed` near its upper bound is refused before the study is
    created rather than failing every trial.

    Raises:
      SweepError: naming --repeats and --seed and the flag's own message.
    """
    if repeats <= 1:
        return
    last = base.seed + repeats - 1
    try:
        resolve(base, [], last)
    except SweepError as err:
        reason = str(err).split(": ", 1)[-1]
        raise SweepError(
            f"--repeats={repeats} with --seed={base.seed}: the last run's seed "
            f"would be {last}: {reason}"
        ) from None


def value_text(value: Any) -> str:
    """A sampled value as flag text: `0.0123`, `3`, `relu`."""
    return repr(value) if isinstance(value, float) else str(value)


def overrides(
    axes: Sequence[Axis], params: Mapping[str, Any]
) -> tuple[tuple[str, str], ...]:
    """A trial's (flag, text) overrides, in the axes' order."""
    return tuple((axis.flag, value_text(params[axis.flag])) for axis in axes)


def suggest(trial: Any, axes: Sequence[Axis]) -> dict[str, Any]:
    """The trial's value for every axis, through Optuna's `suggest_*` calls (a
    retried trial gets its values back; a grid, its point)."""
    params = {}
    for axis in axes:
        dist: Any = axis.distribution
        if axis.is_choice:
            params[axis.flag] = trial.suggest_categorical(axis.flag, dist.choices)
        elif isinstance(dist, distributions.IntDistribution):
            params[axis.flag] = trial.suggest_int(
                axis.flag, dist.low, dist.high, step=dist.step
            )
        else:
            params[axis.flag] = trial.suggest_float(
                axis.flag, dist.low, dist.high, log=dist.log
            )
    return params


def describe(axes: Sequence[Axis]) -> dict[str, str]:
    """{flag: spec}: how a study records its space, so a joining worker matches."""
    return {axis.flag: axis.spec for axis in axes}


def params_text(params: Mapping[str, Any]) -> str:
    """`learning_rate=0.01234, hidden_layers=3`: a variant, as the log names it
    (floats to 4 significant digits; run.json and the study keep them whole)."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in params.items()
    )


def run_name(pairs: Sequence[tuple[str, str]], seed: int) -> str:
    """`flag=value,...,seed=N`: readable, and the same every time the sweep runs."""
    parts = [f"{flag}={_UNSAFE.sub('+', value)}" for flag, value in pairs]
    if not any(flag == "seed" for flag, _ in pairs):
        parts.append(f"seed={seed}")
    return ",".join(parts)


def resolve(
    base: config_lib.TrainConfig, pairs: Sequence[tuple[str, str]], seed: int
) -> config_lib.TrainConfig:
    """The base config with `pairs` applied, parsed and validated like flags."""
    argv = [*config_to_flagfile(base).splitlines(), f"--seed={seed}"]
    argv += [f"--{flag}={value}" for flag, value in pairs]
    try:
        return config_lib.config_from_args(argv)
    except (flags.Error, ConfigError) as err:
        where = ", ".join(f"{f}={v}" for f, v in pairs) or "base flags"
        raise SweepError(f"--grid ({where}): {err}") from None


def check_against_flags(base: config_lib.TrainConfig, axes: Sequence[Axis]) -> None:
    """Resolves every choice and both ends of every range with the base flags,
    so a value the flag itself refuses (`activation=choice:relu,swiggle`,
    `hidden_layers=int:0:500`) fails before any trial.

    Raises:
      SweepError: naming the axis and the flag's own message.
    """
    for axis in axes:
        dist = axis.distribution
        ends = (dist.low, dist.high) if not axis.is_choice else ()  # type: ignore[attr-defined]
        for value in axis.choices if axis.is_choice else map(value_text, ends):
            try:
                resolve(base, [(axis.flag, value)], base.seed)
            except SweepError as err:
                if axis.option == "--grid":
                    raise  # already `--grid (FLAG=VALUE): ...`
                reason = str(err).split(": ", 1)[-1]
                raise SweepError(
                    f"--search={axis.flag}={axis.spec}: {reason}"
                ) from None


def grid_size(axes: Sequence[Axis]) -> int:
    """The number of grid points.

    Raises:
      SweepError: an axis is a range (a grid needs choices).
    """
    for axis in axes:
        if not axis.is_choice:
            raise SweepError(
                f"--sampler=grid: --search={axis.flag}={axis.spec} is a range; "
                "a grid needs choice:... values (or --grid)"
            )
    return math.prod(len(axis.choices) for axis in axes)
