"""A run's note in TensorBoard's Text tab, kept in one replaceable event file.

The note lives in `RUN/events.out.tfevents.note` (tag `note`, step 0): one
file with a fixed name, replaced atomically when the note changes, so the Text
tab shows the current note (and the run's tags) rather than every edit.
Written through `tensorboard.events`: no TensorFlow.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from tensorboard.plugins.text import summary_v2 as text_summary

from pipeline.tensorboard import events

NOTE_FILENAME = events.FILE_PREFIX + "note"
NOTE_TAG = "note"


def note_markdown(note: str, tags: Sequence[str]) -> str:
    """What the Text tab shows: the note, then the tags."""
    parts = [note] if note else []
    if tags:
        parts.append("tags: " + ", ".join(f"`{tag}`" for tag in tags))
    return "\n\n".join(parts)


def write_note(run_dir: str | os.PathLike, note: str, tags: Sequence[str]) -> bool:
    """Shows `note` and `tags` in the run's Text tab; removes the file when both
    are empty. Returns True when the file was written."""
    run_dir = pathlib.Path(run_dir)
    target = run_dir / NOTE_FILENAME
    text = note_markdown(note, tags)
    if not text:
        target.unlink(missing_ok=True)
        return False
    summary = text_summary.text_pb(NOTE_TAG, text)
    events.replace_event_file(target, [events.summary_event(summary)])
    return True
