"""TensorBoard's own server program, as `tensorboard.board.TensorBoardServer`
starts it.

`python -m pipeline.cli.tensorboard_server ARGS` is `python -m tensorboard.main
ARGS` (whose docstring invites swapping it for one's own) with Python's
garbage collector set as the pipeline's programs set it
(`processes.collect_less_often`) before TensorBoard imports TensorFlow.
"""

from __future__ import annotations

from pipeline import processes


def main() -> None:
    processes.collect_less_often()
    from tensorboard import main as tensorboard_main  # TensorFlow's import with it

    tensorboard_main.run_main()


if __name__ == "__main__":
    main()
