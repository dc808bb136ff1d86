"""Ending a run early on purpose: SIGINT/SIGTERM and early stopping.

Both only *decide*; the loop (`pipeline.training.loop`) acts between compiled chunks,
where the model, optimizer and data iterator are consistent and a checkpoint
can be saved.
"""

from __future__ import annotations

import math
import signal
import threading
import types

import tensorflow as tf

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Turns SIGINT/SIGTERM into a request the loop checks between chunks.

    The handler only records the signal, so a compiled chunk is never torn
    mid-step. It also puts the previous handlers back: a second Ctrl-C stops
    the process at once (the atomic checkpoint write keeps the last save
    usable even then). Outside the main thread (where Python cannot install
    handlers) it does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signum: int | None = None
        self._signals = signals
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        self.signum = signum
        self.uninstall()

    def install(self) -> GracefulStop:
        """Installs the handlers (main thread only); returns self."""
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Puts the previous handlers back (idempotent)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


class EarlyStopping(tf.Module):
    """Stops when the validation loss has not improved for `patience` evaluations.

    Its state lives in variables, so it is saved in the run's checkpoint and a
    resumed run stops exactly where an uninterrupted one would.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        super().__init__(name="early_stopping")
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.bad_evaluations = tf.Variable(0, dtype=tf.int64, trainable=False)

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, step: int, loss: float) -> bool:
        """Records one evaluation; True when `loss` is a new best."""
        if loss < float(self.best_loss.numpy()) - self.min_delta:
            self.best_loss.assign(loss)
            self.best_step.assign(step)
            self.bad_evaluations.assign(0)
            return True
        self.bad_evaluations.assign_add(1)
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and int(self.bad_evaluations.numpy()) >= self.patience

    def reason(self, step: int) -> str:
        """One sentence saying why training stopped at `step`."""
        return (
            f"early stopping at step {step}: validation loss has not improved "
            f"for {int(self.bad_evaluations.numpy())} evaluations "
            f"(patience {self.patience}); best {float(self.best_loss.numpy()):.6f} "
            f"at step {int(self.best_step.numpy())}"
        )
