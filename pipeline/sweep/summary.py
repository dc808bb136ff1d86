"""The study's view of a sweep, for `pipeline-compare`: counts, best trial, importances.

The runs table says how each variant did; the study adds what only it knows:
how many trials diverged, were pruned or failed, which trial is best by the
sweep's metric, and (with enough completed trials) Optuna's parameter
importances (PED-ANOVA): which searched flags the metric depended on most.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from pipeline.sweep import space
from pipeline.sweep import storage as storage_lib
from pipeline.sweep import study as study_lib

# Below this many completed trials, importances are mostly noise.
IMPORTANCE_MIN_TRIALS = 5


def find_studies(
    paths: Sequence[str | os.PathLike], storage: str | None = None
) -> list[tuple[str, str, pathlib.Path]]:
    """(storage URL, study name, directory) of each sweep directory in `paths`:
    one holding `study.db` (the default storage), or named after a study in
    `storage`."""
    found = []
    for path in map(pathlib.Path, paths):
        if not path.is_dir():
            continue
        if storage is not None:
            found.append((storage, path.name, path))
        elif (path / "study.db").is_file():
            found.append((storage_lib.default_storage(path), path.name, path))
    return found


def steps_trained(trials: Sequence, experiment: pathlib.Path) -> int:
    """Training steps the study's runs in `experiment` took (pruned ones included)."""
    total = 0
    for trial in trials:
        for name in trial.user_attrs.get("runs", []):
            record = experiment / name / "run.json"
            with contextlib.suppress(OSError, ValueError):
                total += int(json.loads(record.read_text()).get("step") or 0)
    return total


def describe(url: str, name: str, experiment: pathlib.Path | None = None) -> str:
    """Lines about study `name` in `url` (or why it cannot be read).

    Raises:
      SweepError: the storage cannot be opened.
    """
    study_lib.quiet_optuna()
    storage = storage_lib.connect(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return f"study {name!r}: not in {storage_lib.safe_url(url)}"
    trials = study.get_trials(deepcopy=False)
    counts = study_lib.counts(trials)
    definition = study.user_attrs.get(study_lib.DEFINITION_ATTR, {})
    metric = definition.get("metric", "value")
    lines = [
        f"study {name} ({storage_lib.safe_url(url)}): {len(trials)} trials: "
        f"{counts.completed} completed, {counts.diverged} diverged, "
        f"{counts.pruned} pruned, {counts.failed} failed, {counts.running} running; "
        f"{definition.get('sampler', '?')} sampler, "
        f"{study.direction.name.lower()} {metric}"
    ]
    if experiment is not None:
        lines.append(f"steps trained: {steps_trained(trials, experiment):,}")
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    lines += _best(study, completed, metric, experiment)
    lines.append(_importances(study, completed))
    return "\n".join(line for line in lines if line)


def missing_runs(trial: optuna.trial.FrozenTrial, experiment: pathlib.Path) -> list:
    """The trial's runs whose directories are gone from `experiment`."""
    names = trial.user_attrs.get("runs", [])
    return [n for n in names if not (experiment / n / "run.json").is_file()]


def _best(
    study: optuna.Study,
    completed: Sequence,
    metric: str,
    experiment: pathlib.Path | None,
) -> list[str]:
    """The best completed trial whose runs are all still in `experiment`,
    and one line naming the better trials whose runs were deleted or moved
    (the study still holds their values; the logdir no longer has them)."""
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    gone_lines = []
    for trial in sorted(completed, key=lambda t: t.value, reverse=reverse):
        gone = missing_runs(trial, experiment) if experiment is not None else []
        if gone:
            gone_lines.append(f"trial {trial.number} ({', '.join(gone)})")
            continue
        runs = " ".join(trial.user_attrs.get("runs", []))
        best = (
            f"best trial {trial.number}: {metric}={trial.value:.4f} "
            f"({space.params_text(trial.params)})" + (f"  {runs}" if runs else "")
        )
        break
    else:
        best = ""
    if gone_lines:
        gone_lines = [
            "not counted as best, their runs are gone from "
            f"{experiment}: {'; '.join(gone_lines)}"
        ]
    return [best, *gone_lines]


def _importances(study: optuna.Study, completed: Sequence) -> str:
    searched = {k for t in completed for k in t.distributions}
    if len(searched) < 2:
        return ""
    if len(completed) < IMPORTANCE_MIN_TRIALS:
        return (
            f"parameter importances: after {IMPORTANCE_MIN_TRIALS} completed trials "
            f"({len(completed)} so far)"
        )
    # Optuna's default evaluator (PED-ANOVA): deterministic, no scikit-learn.
    importances = optuna.importance.get_param_importances(study)
    text = ", ".join(f"{k} {v:.2f}" for k, v in importances.items())
    return (
        f"parameter importances (PED-ANOVA, {len(completed)} completed trials): {text}"
    )
