"""The CLI's one error edge: exception types to a one-line message, a hint and an exit code.

Exit codes (docs/cli.md):
  0 ok · 1 error · 2 bad input or usage · 3 not found · 4 Hugging Face or network
  5 store integrity (bad GGUF, digest mismatch, disk full) · 6 the daemon is not running
  7 the daemon is busy (queue full) · 8 the model failed to load or run · 130 interrupted

A traceback is printed only with LOCALSERVE_DEBUG=1.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from localserve import errors as e

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NETWORK = 4
EXIT_STORE = 5
EXIT_NO_DAEMON = 6
EXIT_BUSY = 7
EXIT_ENGINE = 8
EXIT_INTERRUPTED = 130

# Most specific first: the first matching type decides the exit code.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (e.InvalidReferenceError, EXIT_USAGE),
    (e.InvalidOptionError, EXIT_USAGE),
    (e.TemplateError, EXIT_USAGE),
    (e.PromptTooLongError, EXIT_USAGE),
    (e.ModelNotFoundError, EXIT_NOT_FOUND),
    (e.RepoNotFoundError, EXIT_NOT_FOUND),
    (e.RevisionNotFoundError, EXIT_NOT_FOUND),
    (e.NoSuchFileError, EXIT_NOT_FOUND),
    (e.ImportSourceError, EXIT_USAGE),
    (e.StoreError, EXIT_STORE),
    (e.HubError, EXIT_NETWORK),
    (e.DaemonNotRunningError, EXIT_NO_DAEMON),
    (e.ServerBusyError, EXIT_BUSY),
    (e.ModelTooLargeError, EXIT_ENGINE),
    (e.EngineError, EXIT_ENGINE),
    (e.LocalserveError, EXIT_ERROR),
)


def describe(exc: BaseException) -> tuple[str, str | None, int]:
    """(message, hint, exit code) for any exception that reaches the edge."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            hint = exc.hint if isinstance(exc, e.LocalserveError) else None
            return str(exc), hint, code
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}", None, EXIT_ERROR
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", None, EXIT_ERROR
    return (
        f"unexpected {type(exc).__name__}: {exc}",
        "this is a bug; run again with LOCALSERVE_DEBUG=1 and report the traceback",
        EXIT_ERROR,
    )


def report(exc: BaseException) -> int:
    """Print an error as one line (plus hint) on stderr; returns the exit code."""
    from localserve.config import debug_enabled  # pydantic: only when there is an error

    message, hint, code = describe(exc)
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(f"Error: {message}\n")
    if hint:
        sys.stderr.write(f"  {hint}\n")
    return code


def run_with_error_edge(app: Callable[[], object]) -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        sys.exit(report(exc))
