"""When a periodic thing is due: the one rule (big_vision's `itstime`).

Every periodic action of the loop (evaluation, checkpoints, progress,
histograms), the chunk planner (`next_due`: a chunk never runs past a due
step) and the histogram budget (`ThinningSchedule`, which only widens the
interval) ask `is_due`; nothing else decides "is it time".
"""

from __future__ import annotations


def is_due(
    step: int, every: int, last_step: int | None = None, not_before: int = 0
) -> bool:
    """True when something done every `every` steps (0 = never) falls on `step`.

    `last_step` (the run's final step) is always due when given; steps
    before `not_before` are not (a thinned schedule's next write).
    """
    periodic = every > 0 and step >= not_before and step % every == 0
    return periodic or step == last_step


def next_due(step: int, every: int, last_step: int | None = None) -> int | None:
    """The first step after `step` that `is_due` (None when none is)."""
    candidates = []
    if every > 0:
        candidates.append((step // every + 1) * every)
    if last_step is not None and last_step > step:
        candidates.append(last_step)
    return min(candidates, default=None)
