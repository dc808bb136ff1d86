"""Compare runs: one row per variant, repeats folded into mean +/- std.

Runs are read with TensorBoard's own loader (`tensorboard.events`, every
point kept) plus their `run.json`. A *variant* (`pipeline.variants`) is a
set of runs whose defining flags are equal except the seed: its repeats.
Rows show only the flags that differ between variants and apply to a row's
model.
Runs trained or evaluated on different data (their `run.json` dataset
fingerprint or split sizes differ) are never ranked together: each data set
gets its own table, marked not comparable, unless the user allows it.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import io
import json
import math
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from pipeline import config as config_lib
from pipeline import files
from pipeline import variants as variants_lib
from pipeline.errors import ConfigError, RunDirError, os_reason
from pipeline.runs import provenance, rundir
from pipeline.tensorboard import events

METRICS = (
    "final/accuracy",
    "best/accuracy",
    "final/loss",
    "best/loss",
    "steps",
    "wall_time",
    "examples_per_sec",
)
# Step of the best test accuracy: a value read from the curve, shown here
# rather than logged as a scalar series.
BEST_STEP = "best/accuracy_step"
# What `pipeline-eval` writes into a run's eval/ writer (tools/evaluate.py):
# accuracy and loss, and precision/recall/F1 (macro means, or the binary
# class's own).
EVAL_TAGS = (
    "accuracy",
    "loss",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision",
    "recall",
    "f1",
)
EVAL_METRICS = tuple(f"eval/{tag}" for tag in EVAL_TAGS)
# Metrics where smaller is better; everything else sorts largest first.
SMALLER_IS_BETTER = ("final/loss", "best/loss", "wall_time")
FORMATS = ("table", "csv", "json", "markdown")


class CompareError(ConfigError):
    """The runs cannot be found, read or compared as asked."""


@dataclasses.dataclass
class RunSummary:
    """One run: its record and its test curves, as read back from disk."""

    path: pathlib.Path
    status: str
    config: dict[str, Any]
    data: str
    metrics: dict[str, float]
    accuracy_curve: list[tuple[int, float]]
    error: str | None = None
    start_time: str = ""
    # The code it ran (`provenance.code_identity`) and its tags.
    commit: str = "-"
    tags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name


@dataclasses.dataclass
class Variant:
    """Runs that differ only in seed, with their metrics aggregated."""

    flags: dict[str, Any]
    runs: list[RunSummary]

    @property
    def data(self) -> str:
        return self.runs[0].data

    def stat(self, metric: str) -> tuple[float, float]:
        """(mean, sample std) of `metric` over the repeats; std 0 for one run."""
        values = [r.metrics[metric] for r in self.runs if metric in r.metrics]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return math.nan, math.nan
        return variants_lib.mean_and_std(values)

    @property
    def commits(self) -> str:
        """The code its repeats ran: `1a2b3c4`, or several joined by commas."""
        return ",".join(dict.fromkeys(run.commit for run in self.runs))

    @property
    def start_time(self) -> str:
        """When its first run started (ISO-8601 UTC, as `run.json` says)."""
        return min((r.start_time for r in self.runs if r.start_time), default="")

    @property
    def status(self) -> str:
        """`completed`, or each status with its count when they differ."""
        counts = collections.Counter(r.status for r in self.runs)
        if len(counts) == 1:
            return next(iter(counts))
        return ",".join(f"{n} {s}" for s, n in sorted(counts.items()))

    def fields(self) -> dict[str, Any]:
        """What `--filter` and `--sort` see: the flags, `repeats` and metric means."""
        out = {k: v for k, v in self.runs[0].config.items() if k != "seed"}
        # `tag==x`: a repeat carries tag x (a set matches by membership).
        out["tag"] = frozenset(t for run in self.runs for t in run.tags)
        out["commit"] = self.commits
        out["repeats"] = len(self.runs)
        out.update({m: self.stat(m)[0] for m in METRICS})
        out.update({m: self.stat(m)[0] for m in self.eval_metrics()})
        return out

    def eval_metrics(self) -> list[str]:
        """The `eval/...` metrics (pipeline-eval's) some of its runs have."""
        return sorted({m for r in self.runs for m in r.metrics if m in EVAL_METRICS})


def find_runs(patterns: Sequence[str]) -> list[pathlib.Path]:
    """Run directories (holding `run.json`) matched by paths or globs, recursively."""
    found: dict[pathlib.Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or []
        if not matches:
            raise CompareError(f"{pattern}: no such file or directory")
        for match in matches:
            for path in rundir.find_run_paths(match):
                found[path] = None
    if not found:
        raise CompareError(
            f"{' '.join(patterns)}: no runs (no {rundir.RECORD_NAME} found)"
        )
    return list(found)


def _series(
    split_dir: pathlib.Path, tags: Sequence[str]
) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each of `tags` logged under `split_dir`."""
    return {
        tag: [(point.step, point.value) for point in points]
        for tag, points in events.read_scalars(split_dir, tags).items()
    }


def _data_id(dataset: dict[str, Any]) -> str:
    if not dataset.get("fingerprint"):
        return f"{dataset.get('name', 'unknown')} (no fingerprint)"
    sizes = " ".join(f"{k}={v}" for k, v in sorted(dataset.get("sizes", {}).items()))
    return f"{dataset.get('name')} {dataset['fingerprint'][:12]} {sizes}".strip()


def load_run(path: pathlib.Path) -> RunSummary:
    """Reads `path/run.json` and the `test/` event files of one run.

    Raises:
      CompareError: the record is missing or damaged.
    """
    try:
        record = rundir.load_record(path)
    except rundir.RecordError as err:
        raise CompareError(str(err)) from None
    return summarize(record)


def load_runs(
    paths: Sequence[pathlib.Path], report: Callable[[str], None] = rundir.warn
) -> list[RunSummary]:
    """The runs whose records load; each damaged one is skipped with one line."""
    return [summarize(record) for record in rundir.scan_records(paths, report)]


def summarize(record: rundir.RunRecord) -> RunSummary:
    """A run's summary from its record and its `test/` event files."""
    path = record.path.parent
    test = _series(path / "test", ("accuracy", "loss"))
    accuracy = test.get("accuracy", [])
    loss = test.get("loss", [])
    metrics: dict[str, float] = {}
    if accuracy:
        metrics["final/accuracy"] = accuracy[-1][1]
        metrics["best/accuracy"] = max(v for _, v in accuracy)
    if accuracy:
        best = max(v for _, v in accuracy)
        metrics["best/accuracy_step"] = float(next(s for s, v in accuracy if v == best))
    if loss:
        metrics["final/loss"] = loss[-1][1]
        metrics["best/loss"] = min(v for _, v in loss)
    metrics.update(_eval_metrics(path))
    config = record.config
    steps = record.step if record.step is not None else config.get("steps")
    metrics["steps"] = float(steps) if isinstance(steps, int | float) else math.nan
    for metric, key in (
        ("wall_time", "wall_time_s"),
        ("examples_per_sec", "examples_per_sec"),
    ):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics[metric] = float(value)
    return RunSummary(
        path=path,
        status=record.status or "unknown",
        config=config,
        data=_data_id(record.dataset),
        metrics=metrics,
        accuracy_curve=accuracy,
        error=record.error,
        start_time=str(record.get("start_time") or ""),
        commit=provenance.code_identity(record.code),
        tags=tuple(record.tags),
    )


def _eval_metrics(path: pathlib.Path) -> dict[str, float]:
    """The last value of each `pipeline-eval` scalar in the run's `eval/` writer."""
    return {
        f"eval/{tag}": series[-1][1]
        for tag, series in _series(path / "eval", EVAL_TAGS).items()
        if series
    }


def group_variants(runs: Sequence[RunSummary]) -> tuple[list[Variant], list[str]]:
    """Groups runs into variants; returns them and the flags that tell them apart.

    Both come from `pipeline.variants`: a flag that does not apply to a
    run's model is neither part of its variant nor shown for it (`-`).
    """
    differing = variants_lib.differing_fields(r.config for r in runs)
    groups: dict[tuple[str, str], Variant] = {}
    for run in runs:
        key = (run.data, variants_lib.variant_key(run.config))
        if key not in groups:
            defining = variants_lib.defining_config(run.config)
            groups[key] = Variant({k: defining.get(k) for k in differing}, [])
        groups[key].runs.append(run)
    return list(groups.values()), differing


# --- --filter: a tiny expression language, parsed without eval() -------------

_TOKEN = re.compile(
    r"\s*(?:(?P<paren>[()])|(?P<op>==|!=|<=|>=|<|>)"
    r"|(?P<quoted>\"[^\"]*\"|'[^']*')|(?P<word>[^\s()<>=!'\"]+))"
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
Predicate = Callable[[dict[str, Any]], bool]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise CompareError(f"--filter: cannot read {text[pos:].strip()!r}")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "quoted":
            kind, value = "value", value[1:-1]
        elif kind == "word" and value in ("and", "or", "not"):
            kind = value
        tokens.append((kind, value))
        pos = match.end()
    return tokens


def _coerce(value: Any) -> Any:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("true", "false"):
            return 1.0 if lowered == "true" else 0.0
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_filter(text: str) -> Predicate:
    """Parses e.g. `model==cnn and (best/accuracy>0.98 or not steps<1000)`.

    Grammar: `expr := term ("or" term)*`, `term := factor ("and" factor)*`,
    `factor := "not" factor | "(" expr ")" | FIELD OP VALUE` with OP one of
    `== != < <= > >=`. Numbers compare as numbers, everything else as text.

    Raises:
      CompareError: naming what could not be parsed.
    """
    tokens = _tokenize(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos][0] if pos < len(tokens) else None

    def take(kind: str) -> str:
        nonlocal pos
        if peek() != kind:
            found = tokens[pos][1] if pos < len(tokens) else "end of filter"
            raise CompareError(f"--filter={text}: expected {kind}, found {found!r}")
        pos += 1
        return tokens[pos - 1][1]

    def expr() -> Predicate:
        parts = [term()]
        while peek() == "or":
            take("or")
            parts.append(term())
        return lambda row: any(p(row) for p in parts)

    def term() -> Predicate:
        parts = [factor()]
        while peek() == "and":
            take("and")
            parts.append(factor())
        return lambda row: all(p(row) for p in parts)

    def factor() -> Predicate:
        if peek() == "not":
            take("not")
            inner = factor()
            return lambda row: not inner(row)
        if peek() == "paren" and tokens[pos][1] == "(":
            take("paren")
            inner = expr()
            if peek() != "paren" or tokens[pos][1] != ")":
                raise CompareError(f"--filter={text}: missing ')'")
            take("paren")
            return inner
        field = take("word")
        op = take("op")
        raw = take("value") if peek() == "value" else take("word")
        value = _coerce(raw)

        def compare(row: dict[str, Any]) -> bool:
            if field not in row:
                known = ", ".join(sorted(row))
                raise CompareError(
                    f"--filter: unknown field {field!r} (known: {known})"
                )
            if isinstance(row[field], frozenset) and op in ("==", "!="):
                return (raw in row[field]) == (op == "==")
            left = _coerce(row[field])
            if isinstance(left, float) != isinstance(value, float):
                left, right = str(row[field]), str(value)
                if op not in ("==", "!="):
                    return False
                return _OPS[op](left, right)
            if isinstance(left, float) and math.isnan(left):
                return False
            return _OPS[op](left, value)

        return compare

    predicate = expr()
    if pos != len(tokens):
        raise CompareError(f"--filter={text}: unexpected {tokens[pos][1]!r}")
    return predicate


# --- ranking and output ---------------------------------------------------------


def sort_key(metric: str) -> tuple[str, bool]:
    """`(metric, descending)` from `--sort`: `-x` descending, `+x` ascending."""
    if metric.startswith(("-", "+")):
        return metric[1:], metric.startswith("-")
    return metric, metric not in SMALLER_IS_BETTER


def rank(
    variants: Sequence[Variant],
    sort: str = "best/accuracy",
    top: int | None = None,
    predicate: Predicate | None = None,
    allow_mismatch: bool = False,
) -> list[list[Variant]]:
    """Filters and sorts variants; one ranked list per data set (just one if allowed).

    Variants missing the sort metric go last.
    """
    metric, descending = sort_key(sort)
    if variants and metric not in variants[0].fields():
        raise CompareError(
            f"--sort={sort}: unknown field (try one of {', '.join(METRICS)})"
        )
    kept = [v for v in variants if predicate is None or predicate(v.fields())]
    groups: dict[str, list[Variant]] = {}
    for variant in kept:
        groups.setdefault("all" if allow_mismatch else variant.data, []).append(variant)

    def key(variant: Variant) -> tuple:
        value = _coerce(variant.fields()[metric])
        if isinstance(value, float):
            missing = math.isnan(value)
            return (missing, 0.0 if missing else (-value if descending else value))
        return (False, str(value))

    ranked = []
    for group in groups.values():
        group = sorted(group, key=key)
        if not isinstance(_coerce(group[0].fields()[metric]), float) and descending:
            group.reverse()
        ranked.append(group[:top] if top else group)
    return ranked


_HEADERS = {
    "final/accuracy": "final acc",
    "best/accuracy": "best acc",
    "final/loss": "final loss",
    "best/loss": "best loss",
    "steps": "last step",
    "wall_time": "wall s",
    "examples_per_sec": "examples/s",
    BEST_STEP: "best at",
    "eval/accuracy": "eval acc",
    "eval/loss": "eval loss",
    "eval/f1_macro": "eval F1",
    "eval/f1": "eval F1",
    "eval/precision_macro": "eval precision",
    "eval/precision": "eval precision",
    "eval/recall_macro": "eval recall",
    "eval/recall": "eval recall",
}
_DIGITS = {
    "steps": 0,
    "wall_time": 1,
    "examples_per_sec": 0,
    BEST_STEP: 0,
}
# The table's width unless --columns asks for more: flag columns that do not
# fit are left out (and named on stderr), most varied flags kept first.
WIDTH = 120
# Test accuracy, final and best; where pipeline-eval ran, its accuracy and F1
# take the place of the best (which --columns=best/accuracy brings back).
DEFAULT_METRICS = ("final/accuracy", "best/accuracy")
DEFAULT_EVAL = ("eval/accuracy", "eval/f1_macro", "eval/f1")
NAME_WIDTH = 36
VALUE_WIDTH = 14


def _cell(variant: Variant, metric: str) -> str:
    mean, std = variant.stat(metric)
    if math.isnan(mean):
        return "-"
    digits = _DIGITS.get(metric, 4)
    text = f"{mean:,.{digits}f}" if digits == 0 else f"{mean:.{digits}f}"
    if len(variant.runs) > 1 and metric not in ("steps",):
        text += f" ± {std:,.{digits}f}" if digits == 0 else f" ± {std:.{digits}f}"
    return text


def _flag_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "-" if value is None else str(value)


def shorten(text: str, width: int) -> str:
    """`text` cut in the middle to `width` characters (`…` marks the cut)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def variant_name(variant: Variant, root: pathlib.Path) -> str:
    """The run (its path under `root`), or the variant with its run count.

    A sweep's repeats share their name but the `seed=N` part
    (`s/learning_rate=0.1 (2 runs)`); other repeats are named by their first
    run (`lr0.1-s0 +1 run`); `--runs` lists every run.
    """
    paths = [r.path.relative_to(root).as_posix() for r in variant.runs]
    if len(paths) == 1:
        return paths[0]
    labels = {
        f"{pathlib.PurePosixPath(p).parent}/{variants_lib.variant_label(r.name)}"
        for p, r in zip(paths, variant.runs, strict=True)
    }
    label = labels.pop().removeprefix("./")
    if not labels and label not in paths:
        return f"{label} ({len(paths)} runs)"
    more = len(paths) - 1
    return f"{paths[0]} +{more} run{'s' if more > 1 else ''}"


def _started(value: str) -> str:
    """`2026-12-06T19:40:12+00:00` -> `12-06 19:40` (UTC, as recorded)."""
    return f"{value[5:10]} {value[11:16]}" if len(value) >= 16 else "-"


@dataclasses.dataclass(frozen=True)
class Column:
    """One table column: its header and how a variant's cell reads."""

    header: str
    cell: Callable[[Variant], str]
    is_flag: bool = False


def _flag_column(flag: str) -> Column:
    def cell(variant: Variant) -> str:
        if flag in variant.flags:
            value = variant.flags[flag]
        else:
            value = variants_lib.defining_config(variant.runs[0].config).get(flag)
        return shorten(_flag_text(value), VALUE_WIDTH)

    return Column(flag, cell, is_flag=True)


def _metric_column(metric: str) -> Column:
    return Column(_HEADERS.get(metric, metric), lambda v: _cell(v, metric))


def columns(
    differing: Sequence[str],
    ranked: Sequence[Sequence[Variant]],
    extra: Sequence[str] = (),
) -> list[Column]:
    """The table's columns: differing flags, runs, metrics, status, start.

    `extra` (`--columns`) adds metrics (`final/loss`, `eval/recall_macro`,
    `all` for every one) or flags.
    """
    root = _common_root(ranked)
    present = {m for g in ranked for v in g for m in v.eval_metrics()}
    every = [*METRICS, BEST_STEP, *sorted(present)]
    evals = [m for m in DEFAULT_EVAL if m in present]
    metrics = [DEFAULT_METRICS[0], *evals] if evals else list(DEFAULT_METRICS)
    flags = list(differing)
    for name in extra:
        if name == "all":
            metrics += [m for m in every if m not in metrics]
        elif name in every or name in EVAL_METRICS:
            metrics += [name] if name not in metrics else []
        elif name in config_lib.FIELDS_BY_NAME:
            flags += [name] if name not in flags else []
        else:
            raise CompareError(
                f"--columns={name}: unknown column (a flag, all, or one of "
                f"{', '.join(every)})"
            )
    return [
        *(_flag_column(f) for f in flags),
        Column("runs", lambda v: shorten(variant_name(v, root), NAME_WIDTH)),
        *(_metric_column(m) for m in metrics),
        Column("status", lambda v: v.status),
        Column("started", lambda v: _started(v.start_time)),
    ]


def _common_root(ranked: Sequence[Sequence[Variant]]) -> pathlib.Path:
    parents = [r.path.parent for g in ranked for v in g for r in v.runs]
    return pathlib.Path(os.path.commonpath(parents)) if parents else pathlib.Path()


def _rows(
    group: Sequence[Variant], cols: Sequence[Column], each_run: bool
) -> list[list[str]]:
    """A row per variant; with `each_run` (`--runs`) its runs' rows under it."""
    rows = []
    for variant in group:
        rows.append([c.cell(variant) for c in cols])
        if not each_run or len(variant.runs) == 1:
            continue
        for run in variant.runs:
            alone = Variant(variant.flags, [run])
            rows.append(
                [
                    ""
                    if c.is_flag
                    else ("  " if c.header == "runs" else "") + c.cell(alone)
                    for c in cols
                ]
            )
    return rows


def _widths(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]


def ran_different_code(ranked: Sequence[Sequence[Variant]]) -> list[str]:
    """The code identities of the runs shown, when there are several."""
    seen = dict.fromkeys(r.commit for g in ranked for v in g for r in v.runs)
    return list(seen) if len(seen) > 1 else []


def code_note(ranked: Sequence[Sequence[Variant]]) -> str | None:
    """One line when the runs compared ran different code, else None."""
    commits = ran_different_code(ranked)
    if not commits:
        return None
    return (
        f"these runs ran different code ({', '.join(commits)}; '+' marks "
        "uncommitted changes): pipeline-runs diff RUN_A RUN_B shows what changed"
    )


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = _widths(headers, rows)
    numeric = [
        all(re.match(r"^[-\d.,± ]*$", r[i]) for r in rows) for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join(
        [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    )


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    out = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def fit(
    cols: list[Column],
    ranked: Sequence[Sequence[Variant]],
    differing: Sequence[str],
    width: int = WIDTH,
) -> tuple[list[Column], list[str]]:
    """`cols` without the flag columns that do not fit in `width`; and those left out.

    The least telling flags go first (`variants.most_telling`: a flag that
    varies inside one directory, a sweep's axis, stays longest).
    """
    variants = [v for g in ranked for v in g]
    by_directory: dict[pathlib.Path, list[dict[str, Any]]] = {}
    for run in (r for v in variants for r in v.runs):
        by_directory.setdefault(run.path.parent, []).append(run.config)
    telling = variants_lib.most_telling(differing, list(by_directory.values()))
    order = sorted(
        (c for c in cols if c.is_flag and c.header in differing),
        key=lambda c: -telling.index(c.header),
    )
    left_out = []
    while order and _table_width(cols, variants) > width:
        dropped = order.pop(0)
        cols = [c for c in cols if c is not dropped]
        left_out.append(dropped.header)
    return cols, sorted(left_out, key=list(differing).index)


def _table_width(cols: Sequence[Column], variants: Sequence[Variant]) -> int:
    widths = _widths(
        [c.header for c in cols], [[c.cell(v) for c in cols] for v in variants]
    )
    return sum(widths) + 2 * (len(widths) - 1)


def _record(
    variant: Variant,
    differing: Sequence[str],
    comparable_group: int,
    root: pathlib.Path,
    with_commit: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {k: variant.flags.get(k) for k in differing}
    out["repeats"] = len(variant.runs)
    for metric in (*METRICS, BEST_STEP, *variant.eval_metrics()):
        mean, std = variant.stat(metric)
        out[f"{metric}_mean"] = None if math.isnan(mean) else mean
        out[f"{metric}_std"] = None if math.isnan(std) else std
    out["data"] = variant.data
    out["comparable_group"] = comparable_group
    out["runs"] = [str(r.path) for r in variant.runs]
    out["name"] = variant_name(variant, root)
    out["status"] = variant.status
    out["start_time"] = variant.start_time
    if with_commit:
        out["commit"] = variant.commits
    return out


def _machine_readable(
    ranked: Sequence[Sequence[Variant]], differing: Sequence[str], fmt: str
) -> str:
    root = _common_root(ranked)
    # A `commit` field only when the runs shown ran different code.
    with_commit = bool(ran_different_code(ranked))
    records = [
        _record(v, differing, i, root, with_commit)
        for i, group in enumerate(ranked)
        for v in group
    ]
    if fmt == "json":
        return json.dumps(records, indent=2)
    fieldnames = list(dict.fromkeys(k for r in records for k in r)) or ["repeats"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for record in records:
        record["runs"] = " ".join(record["runs"])
        writer.writerow(record)
    return buffer.getvalue().rstrip("\n")


def format_ranked(
    ranked: Sequence[Sequence[Variant]],
    differing: Sequence[str],
    fmt: str = "table",
    allow_mismatch: bool = False,
    extra_columns: Sequence[str] = (),
    each_run: bool = False,
    notes: list[str] | None = None,
) -> str:
    """Renders ranked variant groups as `table`, `markdown`, `csv` or `json`.

    A table fits `WIDTH` characters unless `extra_columns` (`--columns`) ask
    for more: flag columns that do not fit are left out and named in
    `notes`. `each_run` (`--runs`) lists every run under its variant. When
    the runs shown ran different code, a last `commit` column (a `commit`
    field in csv/json) says which; the fit counts it like any other column.
    """
    if fmt in ("csv", "json"):
        return _machine_readable(ranked, differing, fmt)
    cols = columns(differing, ranked, extra_columns)
    with_data = allow_mismatch and len({v.data for g in ranked for v in g}) > 1
    if with_data:
        cols.append(Column("data", lambda v: v.data))
    if ran_different_code(ranked):
        # Counted in the fit like any other column: flags make room for it.
        # Cut like a run's name (the stderr note and csv/json list them all).
        cols.append(Column("commit", lambda v: shorten(v.commits, NAME_WIDTH)))
    if fmt == "table" and not extra_columns:
        cols, left_out = fit(cols, ranked, differing)
        if left_out and notes is not None:
            notes.append(
                f"not shown to fit {WIDTH} columns: {', '.join(left_out)} "
                f"(--columns={','.join(left_out)} adds them)"
            )
    headers = [c.header for c in cols]
    render = _markdown_table if fmt == "markdown" else _text_table
    blocks = []
    for i, group in enumerate(ranked):
        title = ""
        if len(ranked) > 1:
            title = f"data: {group[0].data}"
            if i > 0:
                title += "  -- NOT COMPARABLE with the table above (different data)"
            title = f"**{title}**\n\n" if fmt == "markdown" else title + "\n"
        blocks.append(title + render(headers, _rows(group, cols, each_run)))
    return "\n\n".join(blocks)


def format_pruned(runs: Sequence[RunSummary]) -> str:
    """Runs a sweep's pruner stopped early: listed apart, never ranked.

    Their metrics are from the step they were stopped at, so ranking them
    beside runs trained to the end would compare unequal training.
    """
    lines = [f"pruned (stopped early by the study's pruner, not ranked): {len(runs)}"]
    for run in sorted(runs, key=lambda r: r.name):
        final = run.metrics.get("final/accuracy", math.nan)
        lines.append(
            f"  {run.name}  at step {run.metrics.get('steps', math.nan):.0f}  "
            f"test accuracy {final:.4f}"
        )
    return "\n".join(lines)


def plot_curves(
    variants: Sequence[Variant], path: str | os.PathLike, differing: Sequence[str]
) -> None:
    """Test-accuracy curves of every run, one colour per variant (repeats share it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(11, 5), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, variant in enumerate(variants):
        label = (
            ", ".join(f"{k}={_flag_text(variant.flags[k])}" for k in differing)
            or "all runs"
        )
        if len(variant.runs) > 1:
            label += f" (x{len(variant.runs)})"
        for j, run in enumerate(variant.runs):
            if not run.accuracy_curve:
                continue
            steps, values = zip(*run.accuracy_curve, strict=True)
            axes.plot(
                steps,
                values,
                color=colours[i % len(colours)],
                linestyle=("-", "--", ":", "-.")[(i // len(colours)) % 4],
                alpha=0.8,
                label=label if j == 0 else None,
            )
    axes.set_xlabel("step")
    axes.set_ylabel("test accuracy")
    axes.set_title("Test accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# --- --export: every scalar series in long form --------------------------------

EXPORT_COLUMNS = ("run", "split", "tag", "step", "wall_time", "value")


def _split_dirs(run: pathlib.Path) -> list[pathlib.Path]:
    """The run's writer directories (train, test, eval, ...): those with events."""
    return sorted(p for p in run.iterdir() if p.is_dir() and events.has_event_files(p))


def scalar_rows(runs: Sequence[pathlib.Path]) -> list[tuple]:
    """(run, split, tag, step, wall_time, value) for every scalar of `runs`.

    Read with TensorBoard's loader, every point kept. `run` is the path
    relative to the runs' common parent (the run's name for a sweep).
    """
    parent = pathlib.Path(os.path.commonpath([p.parent for p in runs]))
    rows = []
    for run in runs:
        name = run.relative_to(parent).as_posix()
        for split_dir in _split_dirs(run):
            for tag, points in events.read_scalars(split_dir).items():
                rows.extend(
                    (name, split_dir.name, tag, p.step, p.wall_time, p.value)
                    for p in points
                )
    return rows


def export_scalars(runs: Sequence[pathlib.Path], out: str | os.PathLike) -> int:
    """Writes `scalar_rows(runs)` as CSV to `out` (atomically); returns the rows.

    Raises:
      CompareError: naming `--export` if `out` is not a `.csv` file that can
        be written.
    """
    out = pathlib.Path(out)
    if out.suffix.lower() != ".csv":
        raise CompareError(
            f"--export={out}: only .csv is written (no Parquet library is a "
            "dependency of this pipeline)"
        )
    if not out.parent.is_dir():
        raise CompareError(f"--export={out}: {out.parent} is not a directory")
    rows = scalar_rows(runs)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(EXPORT_COLUMNS)
    for run, split, tag, step, wall_time, value in rows:
        writer.writerow([run, split, tag, step, f"{wall_time:.6f}", repr(value)])
    try:
        files.write_atomic(out, text.getvalue())
    except RunDirError as err:
        reason = os_reason(err.__cause__)
        raise CompareError(f"--export={out}: cannot write ({reason})") from None
    return len(rows)
