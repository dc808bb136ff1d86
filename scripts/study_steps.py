"""When a sweep's study first reached a target, and how many steps that took.

    .venv/bin/python scripts/study_steps.py LOGDIR SWEEP_NAME TARGET

Lists the study's trials in start order (state, value, steps trained from
each trial's runs' run.json, parameters), then the first completed trial
whose value is at least TARGET and the steps trained by every trial started
before it finished. The tables of
docs/experiments/2026-12-01-grid-against-tpe.md come from it.
`pipeline-compare LOGDIR/SWEEP_NAME` gives the study's totals and best.
"""

from __future__ import annotations

import pathlib
import sys

import optuna

from pipeline.runs import rundir


def trial_steps(experiment: pathlib.Path, trial: optuna.trial.FrozenTrial) -> int:
    """Steps trained by the trial's runs, from their records (0 if none)."""
    total = 0
    for name in trial.user_attrs.get("runs", []):
        if (experiment / name / rundir.RECORD_NAME).is_file():
            total += rundir.load_record(experiment / name).step or 0
    return total


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    experiment = pathlib.Path(argv[1]) / argv[2]
    target = float(argv[3])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=argv[2], storage=f"sqlite:///{experiment / 'study.db'}"
    )
    trials = sorted(study.trials, key=lambda t: t.datetime_start)
    steps = {t.number: trial_steps(experiment, t) for t in trials}
    reached = None
    for t in trials:
        value = t.value if t.state == optuna.trial.TrialState.COMPLETE else None
        shown = "-" if value is None else f"{value:.4f}"
        print(
            f"trial {t.number:3d} {t.state.name:9s} {shown:>7s} {steps[t.number]:7,d}"
            f"  {t.params}"
        )
        if reached is None and value is not None and value >= target:
            spent = sum(
                steps[u.number]
                for u in trials
                if u.datetime_start <= t.datetime_complete
            )
            reached = f"trial {t.number} ({value:.4f}) after {spent:,} steps"
    print(f"steps trained: {sum(steps.values()):,}")
    print(f"first >= {target}: {reached or 'not reached'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
