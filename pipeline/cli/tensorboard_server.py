"""TensorBoard's own server program, as `tensorboard.board.TensorBoardServer`
starts it.

`python -m pipeline.cli.tensorboard_server ARGS` is `python -m tensorboard.main
ARGS` (whose docstring invites swapping it for one's own) in a process set up
as the pipeline's programs set theirs (`cli.before_tensorflow`) before
TensorBoard imports TensorFlow.
"""

from __future__ import annotations

from pipeline import cli


def main() -> None:
    cli.before_tensorflow()
    from tensorboard import main as tensorboard_main  # TensorFlow's import with it

    tensorboard_main.run_main()


if __name__ == "__main__":
    main()
