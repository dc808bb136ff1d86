"""The one place the sweep goes below Optuna's public API.

Optuna fails a running trial in two public ways: the process that holds it
tells it, or `fail_stale_trials` fails it once its heartbeat has been silent
for the grace period. A sweep worker killed on this machine is known dead at
once (its pid is gone), and Optuna's journal storage has no heartbeat at
all; failing such a trial needs the storage's own calls (`BaseStorage`'s
documented methods for storage implementers), reached by trial number here.
`tests/test_study_adapter.py` pins what this relies on.
"""

from __future__ import annotations

import copy

import optuna
from optuna.trial import FrozenTrial, TrialState


def fail_running_trial(
    storage: optuna.storages.BaseStorage, study_name: str, number: int
) -> FrozenTrial | None:
    """Fails trial `number` if it is still running; the failed trial, or None
    when another process finished (or failed) it first."""
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    try:
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return copy.deepcopy(storage.get_trial(trial_id))
