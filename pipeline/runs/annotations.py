"""Notes and tags on a run, changed after the fact under the run's lock.

A run's note and tags are two fields of its config (`--note`, `--tag`), so
they travel with it wherever the config goes (run.json, flags.cfg, a sweep's
child command line). Changing them later rewrites those fields in run.json
and what TensorBoard shows: the Text tab's note (`tensorboard.notes`) and the
HParams session's `tag` value. It takes the run's lock, so a run being
trained is refused in one line (its own process writes its record).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pipeline import config as config_lib
from pipeline.errors import ConfigError
from pipeline.runs import rundir
from pipeline.tensorboard import hparams as hparams_lib
from pipeline.tensorboard import notes as notes_lib

PROGRAM = "pipeline-runs"


def check_tags(tags: Sequence[str], flag: str) -> None:
    """Raises ConfigError naming `flag` for a tag that is not one word."""
    for tag in tags:
        if not config_lib.is_tag(tag):
            raise ConfigError(
                f"{flag}={tag}: a tag is a word of letters, digits and "
                ". _ : / + - (no comma or space)"
            )


def annotate(
    run_path: str | os.PathLike,
    note: str | None = None,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    clear_tags: bool = False,
) -> rundir.RunRecord:
    """Sets the note (None: unchanged, "": removed) and adds/removes tags.

    Raises:
      RunLockedError: another process holds the run (it is being trained).
      RecordError, RunDirError: the run is missing or its record damaged.
    """
    run_dir = rundir.open_run_dir(run_path)
    if note is not None and "\n" in note:
        raise ConfigError("--note must be one line (flags.cfg holds one flag a line)")
    with rundir.locked(run_dir.path, PROGRAM):
        record = run_dir.record()
        config = dict(record.config)
        if note is not None:
            config["note"] = note or None
        tags = [] if clear_tags else list(record.tags)
        tags = [t for t in tags if t not in set(remove)]
        tags += [t for t in dict.fromkeys(add) if t not in tags]
        config["tag"] = tags
        run_dir.update_record(config=config)
        updated = run_dir.record()
        # flags.cfg is the resolved flags, note and tags included.
        run_dir.write_flagfile(updated.train_config())
        notes_lib.write_note(run_dir.path, updated.note, updated.tags)
        # The HParams table's `tag` column: the experiment config lists it
        # (runs from before tags existed get it now), the session holds it.
        hparams_lib.refresh_experiment_configs(run_dir.path)
        hparams_lib.rewrite_session_start(run_dir.path, {"tag": ",".join(tags)})
        return updated
