"""SIGINT/SIGTERM as a request to stop, checked between chunks.

The handler only *records*; the loop's `StopOnSignal` action
(`pipeline.training.actions`) acts between compiled chunks, where the model,
optimizer and data iterator are consistent and a checkpoint can be saved.
Early stopping, the other planned end, is `pipeline.training.early_stopping`.
"""

from __future__ import annotations

import signal
import threading
import types

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Turns SIGINT/SIGTERM into a request the loop checks between chunks.

    The handler only records the signal, so a compiled chunk is never torn
    mid-step. It also puts the previous handlers back: a second Ctrl-C stops
    the process at once (the atomic checkpoint write keeps the last save
    usable even then). A signal that lands while they are being put back
    (two came together when a test killed a sweep: its run once recorded
    `failed` for it) is part of the same request: the first one is kept. The
    handler map is replaced, never changed in place, because a handler can
    run in the middle of any line of this class. Outside the main thread
    (where Python cannot install handlers) it does nothing.
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
        if self.signum is None:
            self.signum = signum
        self.uninstall()

    def install(self) -> GracefulStop:
        """Installs the handlers (main thread only); returns self."""
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                previous = signal.signal(signum, self._handle)
                self._previous = {**self._previous, signum: previous}
        return self

    def uninstall(self) -> None:
        """Puts the previous handlers back (idempotent)."""
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def __enter__(self) -> GracefulStop:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()
