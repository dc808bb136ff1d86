"""`pipeline-sweep`'s search: a study of training runs on Optuna's public API.

    space    the searched flags: one `Axis` per `--grid`/`--search` argument
    runs     a trial's runs on disk: names, configs, what an earlier life left
    storage  where the study lives (SQLite, PostgreSQL, a journal file) and
             the lock that keeps `--trials` exact across workers
    study    the study: its definition, sampler, pruner, counts, dead workers
    optuna_adapter  the one place that goes below Optuna's public API
    link     the training process's side: report to the trial, hear the verdict
    worker   trains trials as `pipeline-train` processes, tells the study
    driver   from the options to a finished sweep, and what it prints
    summary  the study's view for `pipeline-compare`

A trial whose loss or weights turn NaN/Inf is a result (`diverged`), not a
failure: Optuna's convention for a NaN objective (the trial FAILs, the study
goes on) with the reason in the trial's user attributes.

No TensorFlow here, except in `pruning` (a training loop action).
"""

from pipeline.errors import ConfigError


class SweepError(ConfigError):
    """The sweep cannot be planned, opened or resumed as asked."""
