"""Open a trained run: its recorded config, a chosen checkpoint, the restored model.

Shared by `pipeline-eval`, `pipeline-predict` and `pipeline-export`. Finding
the run and the checkpoint needs no TensorFlow, so bad `--run`/`--checkpoint`
values fail in well under a second; only `load_model` imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import TYPE_CHECKING, Any

from pipeline import data as data_lib
from pipeline.config import TrainConfig, config_from_dict
from pipeline.errors import ConfigError
from pipeline.runs import rundir

if TYPE_CHECKING:
    import keras

LATEST = "latest"
SPLITS = ("train", "validation", "test")
_CHECKPOINT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def config_from_record(record: dict[str, Any]) -> TrainConfig:
    """Rebuilds the TrainConfig a run recorded in run.json (unknown keys ignored)."""
    values = record.get("config")
    if not isinstance(values, dict):
        raise rundir.RunDirError("run.json has no 'config' record")
    return config_from_dict(values)


def checkpoint_steps(checkpoint_dir: pathlib.Path) -> list[int]:
    """Steps of the complete checkpoints in `checkpoint_dir`, ascending.

    A checkpoint is complete when its `.index` file exists (TensorFlow writes
    it last); `ckpt-N_temp/` leftovers of a killed save are skipped.
    """
    if not checkpoint_dir.is_dir():
        return []
    steps = []
    for path in checkpoint_dir.iterdir():
        match = _CHECKPOINT_INDEX.match(path.name)
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """A run directory, its recorded config and one chosen checkpoint."""

    run_dir: rundir.RunDir
    config: TrainConfig
    step: int
    checkpoint_prefix: str

    def load_model(self) -> keras.Model:
        """Builds the run's model and restores the checkpoint's weights into it."""
        from pipeline import models

        return models.restore_model(self.config, self.checkpoint_prefix)

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


def open_run(path: str | pathlib.Path, checkpoint: str | int = LATEST) -> RestoredRun:
    """Finds the run at `path` and the checkpoint `checkpoint` names.

    Raises:
      RunDirError: the run directory or its run.json is missing, the run has no
        checkpoint, or no checkpoint was saved at the requested step (the
        message lists the steps that exist).
    """
    run_dir = rundir.open_run_dir(path)
    config = config_from_record(run_dir.read_record())
    steps = checkpoint_steps(run_dir.checkpoint_dir)
    if not steps:
        raise rundir.RunDirError(
            f"{run_dir.checkpoint_dir}: no checkpoint saved yet (nothing to restore)"
        )
    if checkpoint == LATEST:
        step = steps[-1]
    elif checkpoint in steps:
        step = int(checkpoint)
    else:
        listed = ", ".join(str(s) for s in steps)
        raise rundir.RunDirError(
            f"--checkpoint={checkpoint}: no checkpoint at that step in "
            f"{run_dir.checkpoint_dir} (saved steps: {listed})"
        )
    return RestoredRun(
        run_dir=run_dir,
        config=config,
        step=step,
        checkpoint_prefix=str(run_dir.checkpoint_dir / f"ckpt-{step}"),
    )
