"""A clean stop on Ctrl-C or SIGTERM: training finishes its step, saves last.pt, and exits."""

from __future__ import annotations

import signal
import sys
import threading


class StopFlag:
    """First Ctrl-C (or SIGTERM, as job schedulers send): stop cleanly after the current step,
    last.pt saved there. Second: abort.

    DataLoader workers ignore SIGINT (dataset.ignore_sigint): a terminal's Ctrl-C reaches the
    whole process group, and a worker killed by it would end the run before the clean stop.
    Under torchrun, its agent forwards one SIGINT to every rank; the ranks agree on the step
    to stop at (train_step) and rank 0 saves, well within torchrun's 30 s shutdown timeout.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)

    def restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}
