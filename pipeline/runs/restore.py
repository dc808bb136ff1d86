"""Open a trained run: its recorded config, a chosen checkpoint, the restored model.

Shared by `pipeline-eval`, `pipeline-predict` and `pipeline-export`. Finding
the run and the checkpoint needs no TensorFlow, so bad `--run`/`--checkpoint`
values fail in well under a second; only `load_model` imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline import data as data_lib
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.runs import checkpoints, rundir

if TYPE_CHECKING:
    import keras

LATEST = "latest"
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class RestoredRun:
    """A run directory, its recorded config and the checkpoint to restore.

    Until `load_model` runs, `step` and `checkpoint_prefix` name the newest
    checkpoint whose files look complete (or the requested one); `load_model`
    applies the one rule of `checkpoints.choose_restorable` and updates them
    to the checkpoint it actually restored.
    """

    run_dir: rundir.RunDir
    config: TrainConfig
    step: int
    checkpoint_prefix: str
    requested: int | None = None
    report: Callable[[str], None] = rundir.warn

    def load_model(self, precision: str | None = None) -> keras.Model:
        """Builds the run's model from the newest checkpoint that restores.

        `precision` overrides the run's `--precision` (its variables are
        float32 at every precision, so any policy restores them): export
        serves float32, which TensorFlow Lite converts on every CPU.

        Raises:
          CheckpointError: no checkpoint (or not the requested one) restores.
        """
        from pipeline import models

        config = self.config
        if precision is not None:
            config = dataclasses.replace(config, precision=precision)
        chosen, model = checkpoints.choose_restorable(
            self.run_dir.checkpoint_dir,
            lambda prefix: models.restore_model(config, prefix),
            step=self.requested,
            max_step=self.config.steps,
            report=self.report,
        )
        self.step = chosen.step
        self.checkpoint_prefix = str(chosen.prefix)
        return model

    def load_split(
        self,
        split: str = "test",
        dataset: str | None = None,
        data_dir: str | None = None,
    ) -> tuple[str, data_lib.Split]:
        """(dataset name, split): the run's own dataset unless `dataset` differs.

        The split is cut the way training cut it (the run's validation
        fraction and binary class apply), so `test` is exactly the split
        training evaluated on.

        Raises:
          ConfigError: `--data_dir` with the bundled sample, an unknown split,
            or `validation` for a run that held none out.
          DataError: the dataset's files are missing or corrupt.
        """
        config = self.config
        name = dataset or config.dataset
        if data_dir is None and name == config.dataset:
            data_dir = config.data_dir
        if name == "mnist_sample" and data_dir:
            raise ConfigError("--data_dir is not used with --dataset=mnist_sample")
        if split not in SPLITS:
            raise ConfigError(f"--split={split}: must be one of {', '.join(SPLITS)}")
        loaded = data_lib.load_dataset(
            name, data_dir, config.validation_split, config.binary_class
        )
        chosen = getattr(loaded, split)
        if chosen is None:
            raise ConfigError(
                f"--split={split}: run {self.run_dir.name} was trained without "
                "--validation_split, so it has no validation split"
            )
        return name, chosen


def open_run(
    path: str | pathlib.Path,
    checkpoint: str | int = LATEST,
    report: Callable[[str], None] = rundir.warn,
) -> RestoredRun:
    """Finds the run at `path` and the checkpoint `checkpoint` names (no TensorFlow).

    Raises:
      RunDirError: the run directory or its run.json is missing or damaged,
        the run has no checkpoint, or none was saved at the requested step
        (the message lists the steps that exist).
    """
    run_dir = rundir.open_run_dir(path)
    config = run_dir.record().train_config()
    found = checkpoints.list_checkpoints(run_dir.checkpoint_dir)
    if not found:
        raise checkpoints.NoCheckpointError(
            f"{run_dir.checkpoint_dir}: no checkpoint saved yet (nothing to restore)"
        )
    requested = None if checkpoint == LATEST else int(checkpoint)
    if requested is not None and requested not in {c.step for c in found}:
        listed = ", ".join(str(c.step) for c in found)
        raise checkpoints.CheckpointError(
            f"--checkpoint={checkpoint}: no checkpoint at that step in "
            f"{run_dir.checkpoint_dir} (saved steps: {listed})"
        )
    step = requested if requested is not None else found[-1].step
    return RestoredRun(
        run_dir=run_dir,
        config=config,
        step=step,
        checkpoint_prefix=str(run_dir.checkpoint_dir / f"ckpt-{step}"),
        requested=requested,
        report=report,
    )
