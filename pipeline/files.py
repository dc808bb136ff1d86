"""Writing a file so that no reader ever sees half of it.

Every file the pipeline replaces in place (run.json, the checkpoint state,
an HParams config, a note, the Projector's metadata and sprite, an export's
CSV) goes through `write_atomic`: a reader (TensorBoard, a resume, another
worker) sees the old file or the new one, and a kill or a full disk leaves
no temporary file behind.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

from pipeline.errors import RunDirError, os_reason

# A readable file, as a plain `open()` under the usual umask makes it: the
# temporary file's 0600 would hide a run from a TensorBoard run by another user.
FILE_MODE = 0o644


def write_atomic(path: str | os.PathLike, payload: bytes | str) -> None:
    """Writes `payload` (text as UTF-8) to a temporary sibling, fsyncs it and
    renames it over `path`.

    The temporary name starts with a dot and does not contain `path`'s name,
    so neither TensorBoard (which reads any file named `*tfevents*`) nor a
    glob for the real files picks it up.

    Raises:
      RunDirError: naming `path` and the OS reason (the OSError is its
        `__cause__`); no temporary file is left.
    """
    path = pathlib.Path(path)
    if isinstance(payload, str):
        payload = payload.encode()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            pathlib.Path(tmp).unlink(missing_ok=True)
        raise RunDirError(f"{path}: cannot write ({os_reason(err)})") from err
    except BaseException:
        if tmp is not None:
            pathlib.Path(tmp).unlink(missing_ok=True)
        raise
