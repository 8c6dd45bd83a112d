"""Stop a long command cleanly on Ctrl-C (SIGINT) or ``kill`` (SIGTERM).

Both signals raise :class:`KeyboardInterrupt` in the main thread, so the one code path that
already handles Ctrl-C (the engine keeps what finished, a sweep keeps its rows) handles
SIGTERM too; the command then exits with the shell's code for the signal received
(128 + signal number: 130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """The signal that stopped the command, if any."""

    signum: int | None = None

    @property
    def exit_code(self) -> int:
        """128 + the signal number; 130 (SIGINT) for an interrupt raised without a signal."""
        return 128 + (self.signum if self.signum is not None else signal.SIGINT)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM raise KeyboardInterrupt inside the body (main thread only)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.signum = signum
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
