"""The one "is it due" rule and the planner's "next due step" agree."""

import pytest

from pipeline.cadence import is_due, next_due


@pytest.mark.parametrize("every", [0, 1, 3, 10])
@pytest.mark.parametrize("last_step", [None, 7, 25])
def test_next_due_is_the_first_step_that_is_due(every, last_step):
    for step in range(30):
        later = [t for t in range(step + 1, 40) if is_due(t, every, last_step)]
        assert next_due(step, every, last_step) == (later[0] if later else None)


def test_the_last_step_is_due_even_when_never_periodic():
    assert is_due(25, 0, last_step=25)
    assert not is_due(20, 0, last_step=25)
    assert not is_due(20, 10, not_before=21)
    assert is_due(30, 10, not_before=21)
