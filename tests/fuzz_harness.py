"""What every fuzzed input must end in: a valid run, or one clean line of error.

The fuzz tests (tests/test_fuzz_*.py) run the real CLI in-process (typer's CliRunner) under a
per-example time limit, so a hang is a failure, not a stuck suite. ``examples(ci, fuzz)`` sizes
a test for the profile in use: the fast CI profile by default, ``HYPOTHESIS_PROFILE=fuzz``
(``make fuzz``) for the long run.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from typer.testing import CliRunner, Result

from llmservingsim.cli import app

FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"

# Exit codes a user mistake may end in (errors.py): ConfigError/TraceError 2, DoesNotFitError 3.
USER_ERROR_CODES = frozenset({2, 3})


def examples(ci: int, fuzz: int) -> int:
    """Examples for one fuzz test under the active profile."""
    return fuzz if FUZZ else ci


class Hang(Exception):
    """An example ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread when the body runs longer than ``seconds``."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(args: list[str], seconds: float = 30.0) -> Result:
    """``llmservingsim ARGS`` in-process, under a time limit."""
    with time_limit(seconds):
        return CliRunner().invoke(app, args)


def quick_run_args(out: Path) -> list[str]:
    """Flags that keep a fuzzed run's outputs to summary.json and the two tables."""
    return ["--out", str(out), "--quiet", "--no-report", "--no-trace"]


OUTCOMES: Counter[tuple[str, int]] = Counter()
"""(test file, exit code) of every fuzzed CLI run this session; conftest prints the tally."""


def assert_clean_outcome(result: Result, names: tuple[str, ...] = ()) -> None:
    """A valid run (exit 0, summary.json written), or a one-line ``error:`` naming one of
    ``names`` (a file, a key) with a user-error exit code — never a traceback."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").partition("::")[0].rpartition("/")[2]
    OUTCOMES[(test, result.exit_code)] += 1
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback instead of an error line: {result.exception!r}\n{output}")
    if result.exit_code == 0:
        return
    assert result.exit_code in USER_ERROR_CODES, f"exit {result.exit_code}: {output}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{output}"
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    if names:
        assert any(name in lines[0] for name in names), f"error names none of {names}: {output}"
