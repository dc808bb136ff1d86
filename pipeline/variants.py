"""What a variant is: the one definition compare, seed bands, HParams and sweeps use.

A *variant* is a set of runs that train the same thing: their defining
config is equal and they saw the same data; only the seed (and where or how
often they wrote) may differ. Two questions decide which fields define it,
and both are answered by the declarations in `pipeline/config.py`:

- Does the field apply to the run's model family? `option(applies_to=...)`
  says so: an MLP has no conv layers and logreg no hidden layers, so two
  logreg runs with different `--conv_filters` are one variant, and
  `--hidden_units` is never reported as what tells two CNNs apart.
- Does it change what is trained? Fields declared `hparam=False` (where and
  how often to write), the seed, and the unused one of each steps/epochs
  pair (`config.unused_alternatives`) do not.

Configs here are the JSON form a run records (`config_to_dict`). No
TensorFlow: the sweep driver and `pipeline-compare` import this.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline import config as config_lib

# Fields that never define a variant, whatever the model: repeats differ in it.
REPEAT_FIELDS = frozenset({"seed"})
_SEED_PART = re.compile(r"(^|,)seed=[^,]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")


@functools.cache
def applicable_fields(model: str) -> frozenset[str]:
    """Config fields that mean something for `model` (a family name).

    A family this version does not know (a record from a newer one) gets the
    fields every family shares.
    """
    return frozenset(
        f.name
        for f in config_lib.FIELDS
        if model in f.option.applies_to
        or set(f.option.applies_to) >= set(config_lib.MODELS)
    )


def normalized(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as this version records it: known fields, defaults filled in.

    Records written by older versions lack newer fields (which then held
    their default) and may hold fields since removed; normalizing makes both
    compare equal to a fresh record of the same run.
    """
    return config_lib.config_to_dict(config_lib.config_from_dict(dict(config)))


def defining_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `config` that define its variant, in declaration order.

    Applicable to the run's model, declared as a hyperparameter, not the
    seed, and not the unused one of --steps/--epochs (a run given in epochs
    records the steps they came to as well).
    """
    full = normalized(config)
    typed = config_lib.config_from_dict(full)
    skip = (
        config_lib.NOT_HPARAMS | REPEAT_FIELDS | config_lib.unused_alternatives(typed)
    )
    applicable = applicable_fields(typed.model)
    return {
        name: value
        for name, value in full.items()
        if name in applicable and name not in skip
    }


def variant_key(config: Mapping[str, Any], dataset_fingerprint: str = "") -> str:
    """A string equal for two runs exactly when they are one variant.

    `dataset_fingerprint` (from `run.json`'s `dataset`) keeps runs trained on
    different data apart even when their flags are equal.
    """
    return json.dumps([defining_config(config), dataset_fingerprint], sort_keys=True)


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def differing_fields(configs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Defining fields whose value differs between `configs`, in declaration order.

    A field counts only among the configs it applies to: `conv_filters`
    differs when two CNNs have different filters, not because a logreg run
    has none (`model` already tells those apart).
    """
    seen: dict[str, set[str]] = {}
    for config in configs:
        for name, value in defining_config(config).items():
            seen.setdefault(name, set()).add(_text(value))
    return [f.name for f in config_lib.FIELDS if len(seen.get(f.name, ())) > 1]


def varying_within(groups: Iterable[Sequence[Mapping[str, Any]]]) -> set[str]:
    """Fields that differ inside one group of configs (the runs of one
    directory: a sweep's axes, runs trained side by side)."""
    return {f for configs in groups for f in differing_fields(configs)}


def most_telling(
    fields: Iterable[str],
    groups: Sequence[Sequence[Mapping[str, Any]]],
) -> list[str]:
    """`fields` ordered most telling first, for views that show only a few.

    Fields that vary inside a group (a sweep's axes) come before those that
    vary only between groups; then those with more distinct values; then
    declaration order. HParams' visible columns and `pipeline-compare`'s
    120-column table both keep the first ones.
    """
    configs = [defining_config(c) for g in groups for c in g]
    within = varying_within(groups)
    order = [f.name for f in config_lib.FIELDS]

    def key(field: str) -> tuple[bool, int, int]:
        values = {_text(c.get(field)) for c in configs if field in c}
        return field not in within, -len(values), order.index(field)

    return sorted(set(fields), key=key)


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std) of a variant's values over its repeats (seeds); std 0
    for one repeat. `pipeline-compare`'s cells and the seed bands both use it."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def variant_label(run_name: str) -> str:
    """The run's name without its `seed=N` part (`lr=0.1,seed=2` -> `lr=0.1`).

    A sweep names its runs `flag=value,...,seed=N`, so the repeats of one
    variant share this label (seed bands' run names, HParams' trial IDs).
    """
    label = _SEED_PART.sub("", run_name).strip(",")
    return _UNSAFE.sub("+", label) or "all"


def inapplicable_flags(model: str, names: Iterable[str]) -> list[str]:
    """The config fields among `names` that do not apply to `model`, sorted."""
    applicable = applicable_fields(model)
    return sorted(
        n for n in set(names) if n in config_lib.FIELDS_BY_NAME and n not in applicable
    )


def command_line_flags(argv: Sequence[str]) -> set[str]:
    """Flag names written on the command line itself (not inside a flagfile)."""
    names = set()
    for arg in argv[1:]:
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name = arg.lstrip("-").split("=", 1)[0]
        if name not in config_lib.FIELDS_BY_NAME and name.startswith("no"):
            name = name[2:]  # absl's --noflag for a boolean
        names.add(name)
    return names


def inapplicable_warning(model: str, argv: Sequence[str]) -> str | None:
    """One line naming the command-line flags `model` does not use, or None.

    Only flags typed on the command line count: a flagfile shared by several
    families (flags/demo.cfg) sets flags for each of them on purpose.
    """
    unused = inapplicable_flags(model, command_line_flags(argv))
    if not unused:
        return None
    named = ", ".join(f"--{n}" for n in unused)
    verb = "does" if len(unused) == 1 else "do"
    return f"{named} {verb} not apply to --model={model}; ignored"
