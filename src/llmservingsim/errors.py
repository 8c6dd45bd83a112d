"""User-facing errors.

Every mistake a user can make (bad config key, unreadable trace row, a model that does not fit)
is raised as a :class:`UserError`. The CLI prints its one-line message and exits non-zero,
never a traceback.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x1e``):
    a message quoting a user's key or value stays one line whatever they typed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UserError(Exception):
    """A mistake in the user's input; the message is shown on one line (control characters
    from the user's input escaped)."""

    exit_code = 1

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(UserError):
    """Invalid configuration (unknown key, wrong type, bad value). Exit code 2."""

    exit_code = 2


class TraceError(UserError):
    """A workload trace file that cannot be read; the message names the file and line."""

    exit_code = 2


class DoesNotFitError(UserError):
    """The model weights (plus activations) do not fit the device memory."""

    exit_code = 3


class BackendError(UserError):
    """A user-supplied perf backend (an external command, a plugin) failed; the message
    quotes the last line it printed on stderr. Exit code 2."""

    exit_code = 2


# CPython's message when an interpreted class extends a compiled one that does not admit it.
COMPILED_BASE = "interpreted classes cannot inherit from compiled"


def plugin_base_error(key: str, name: str, exc: TypeError) -> ConfigError | None:
    """The one-line error for a user's class (``key`` = ``name``) that extends a compiled
    class which does not accept interpreted subclasses (its instantiation raises ``exc``), or
    None when ``exc`` is another TypeError."""
    if COMPILED_BASE not in str(exc):
        return None
    return ConfigError(
        f"{key}: {name!r} extends a compiled class that does not accept subclasses written in "
        "Python; extend one that does (docs/extending.md lists them)"
    )


class InputWarning(UserWarning):
    """Input the simulator accepts after changing it (e.g. trace lengths clipped to the model
    context); ``run`` prints each as one ``warning:`` line on stderr."""
