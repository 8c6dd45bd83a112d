"""Stop a long command cleanly on Ctrl-C (SIGINT) or ``kill`` (SIGTERM).

Both signals raise :class:`KeyboardInterrupt` in the main thread, so the one code path that
already handles Ctrl-C (the engine keeps what finished, a sweep keeps its rows) handles
SIGTERM too; the command then exits with the shell's code for the signal received
(128 + signal number: 130 for SIGINT, 143 for SIGTERM).

An exception raised between any two bytecodes could leave the simulation's state half
updated (a request finished but not yet released, a sample's value stored without its count),
so the engine's loop holds the signals (:func:`signals_held`): it notes one, stops at the next
event boundary, and only then lets the handler raise.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

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


@dataclass
class HeldSignals:
    """A stop signal that arrived while held (None: none did), and the handlers to give it to."""

    signum: int | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def poll(self) -> int | None:
        """The noted signal, after letting pending signal handlers run: this is Python code, so
        calling it from the compiled engine (which runs none otherwise) lets the interpreter
        run the handler of a signal that arrived meanwhile."""
        return self.signum

    def deliver(self) -> None:
        """Hand the noted signal to the handler installed before (which may raise
        KeyboardInterrupt, or only note it and return) and clear it."""
        signum, self.signum = self.signum, None
        handler = self.previous.get(signum) if signum is not None else None
        if handler is not None:
            handler(signum, None)


@contextmanager
def signals_held() -> Iterator[HeldSignals]:
    """Inside, SIGINT and SIGTERM are only noted (``held.signum``), for a loop to poll and hand
    over at a clean point (:meth:`HeldSignals.deliver`); one still noted when the body ends
    normally is handed over then (an exception leaving the body wins over it). Signals whose
    handler is not a Python function (the default SIGTERM action, ignored ones), and every
    signal outside the main thread, are left alone."""
    held = HeldSignals()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def note(signum: int, frame: FrameType | None) -> None:
        if held.signum is None:
            held.signum = signum

    for stop_signal in STOP_SIGNALS:
        if callable(signal.getsignal(stop_signal)):
            held.previous[stop_signal] = signal.signal(stop_signal, note)
    finished = False
    try:
        yield held
        finished = True
    finally:
        for signum, handler in held.previous.items():
            signal.signal(signum, handler)
    if finished:
        held.deliver()
