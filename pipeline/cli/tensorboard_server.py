"""TensorBoard's own server program, as `pipeline.tensorboard.board.TensorBoardServer`
starts it.

`python -m pipeline.cli.tensorboard_server [--without_tensorflow] ARGS` is
`python -m tensorboard.main ARGS` (whose docstring invites swapping it for
one's own) in a process set up as the pipeline's programs set theirs
(`cli.before_tensorflow`).

With `--without_tensorflow` TensorBoard runs on its own file and event
readers: its import of TensorFlow is refused. It then starts on a third of
the CPU: 0.8 s against 2.5-2.7 s, and it serves 0.8 s after its start
against 2.5 s (a throwaway script starting `TensorBoardServer` both ways,
three interleaved pairs, 2-core AMD EPYC VM, on 0bcf5a3). TensorBoard's own
switch (`events.read_without_tensorflow`, for processes that only read
events) is not enough here: the Profile plugin imports TensorFlow itself
(3.6 s of CPU with the switch alone). `board.needs_tensorflow` decides when
the server needs TensorFlow after all.
"""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.tensorboard.board import WITHOUT_TENSORFLOW


def main() -> None:
    if sys.argv[1:2] == [WITHOUT_TENSORFLOW]:
        del sys.argv[1]
        sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
    cli.before_tensorflow()
    from tensorboard import main as tensorboard_main  # TensorFlow's import with it

    tensorboard_main.run_main()


if __name__ == "__main__":
    main()
