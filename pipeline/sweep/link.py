"""Between a sweep worker and the `pipeline-train` process training one run
of its trial: a socket pair, one question per evaluation and one answer.

The worker starts the run with one end of the pair open (`pass_fds`) and
names it in the `PIPELINE_SWEEP_TRIAL` environment variable (JSON: the fd,
study, trial number, metric). At each evaluation the run sends
`{"step": S, "value": V}`; the worker reports it to its trial (Optuna's
`Trial.report` and `should_prune`, on the trial object it holds) and answers
`{}` (go on), `{"prune": "median pruner"}` or `{"ended": "..."}` (the study
ended the trial meanwhile). The run itself never opens the study, so it
needs no storage URL or password, and a closed socket tells it that the
sweep that started it is gone.

No TensorFlow and no Optuna here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import socket
from collections.abc import Mapping
from typing import Any

from pipeline.errors import TrainingError, TrainingInterruptedError

ENV_VAR = "PIPELINE_SWEEP_TRIAL"


@dataclasses.dataclass(frozen=True)
class TrialLink:
    """Which trial a run belongs to (what its record says), and its socket."""

    study: str
    number: int
    metric: str
    repeat: int = 0
    storage: str = ""  # the storage URL with any password masked
    fd: int = -1

    def to_env(self) -> dict[str, str]:
        return {ENV_VAR: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TrialLink | None:
        """The link the worker passed, or None for a run outside any sweep."""
        text = environ.get(ENV_VAR)
        return cls(**json.loads(text)) if text else None

    def record(self) -> dict[str, Any]:
        """What the run record says about its trial."""
        fields = ("study", "number", "repeat", "storage", "metric")
        return {k: getattr(self, k) for k in fields}


class TrialEndedError(TrainingError):
    """The study ended this trial while the run trained it (its worker was
    found dead and the trial retried)."""


class RunEnd:
    """The training process's end: asks whether to go on after an evaluation."""

    def __init__(self, fd: int):
        # A copy of the descriptor: the process that passed `fd` closes its
        # own (a warm trainer, after the run), never one reused meanwhile.
        self.sock = socket.socket(fileno=os.dup(fd))

    def ask(self, step: int, value: float) -> str:
        """ "" to go on, or what says stop (`median pruner`).

        Raises:
          TrialEndedError: the study ended the trial.
          TrainingInterruptedError: the sweep is gone (the run stops at its
            last checkpoint, `interrupted`, and can be continued).
        """
        try:
            self.sock.sendall(
                json.dumps({"step": step, "value": value}).encode() + b"\n"
            )
            line = self.sock.makefile("rb").readline()
        except OSError:
            line = b""
        if not line:
            raise TrainingInterruptedError(
                "interrupted: the pipeline-sweep that started this run is gone",
                signal.SIGTERM,
            )
        answer = json.loads(line)
        if "ended" in answer:
            raise TrialEndedError(answer["ended"])
        return answer.get("prune", "")


class WorkerEnd:
    """The sweep worker's end: reads questions, sends answers."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.closed = False  # the run closed its end (it is ending)

    def question(self, timeout: float) -> dict[str, Any] | None:
        """The next question, or None if none came within `timeout` seconds."""
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return None
            data = self.sock.recv(4096)
            if not data:
                self.closed = True
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def answer(self, answer: dict[str, str]) -> None:
        self.sock.sendall(json.dumps(answer).encode() + b"\n")
