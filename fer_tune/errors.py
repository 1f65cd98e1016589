"""The one exception type for a user's mistake, the words for why a file could not be written, and how
each way a command ends reaches the user: one line and an exit status."""

import errno
import os
import sys
from collections.abc import Callable

DEPLOY_INSTALL = 'pip install -e ".[deploy]"'  # what a missing optional package of predict / export asks for


class UserError(Exception):
    """A problem with the user's input (a file, a field, an option), with what to do about it.

    The message names the file / row / key and the fix; the CLI prints it on one line
    (no traceback) and exits with status 2.
    """


class TrialsFailed(Exception):
    """Trials of a search ended in error: its results are written but incomplete (exit 3)."""


class LowDiskSpace(OSError):
    """fer-tune stopped a run while its disk still had room for the state it continues from; built as
    ``LowDiskSpace(why, path)``."""

    def __init__(self, why: str, path: str) -> None:
        super().__init__(errno.ENOSPC, why, path)


class WriteStopped(Exception):
    """A run a full or read-only disk stopped (``trouble``), with the command that continues it (``how``)."""

    def __init__(self, trouble: OSError, how: str) -> None:
        super().__init__(how)
        self.trouble = trouble
        self.how = how


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C (or SIGTERM) that stopped a command which says how it continues: the CLI prints the
    message after ``interrupted;`` and exits 130."""


OS_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long (a name is at most 255 bytes)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


DISK_FIXES = {  # what a user does about a write that failed for each cause
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (or raise the quota)",
    errno.EROFS: "make it writable or give --results a writable folder",
    errno.ENAMETOOLONG: "give a shorter path",
}
SQLITE_CAUSES = {"database or disk is full": errno.ENOSPC, "readonly database": errno.EROFS}  # sqlite's own words


def os_cause(exc: OSError) -> str:
    """Why ``exc`` happened, in the words a user acts on (no space left / read-only / name too long)."""
    return OS_CAUSES.get(exc.errno, exc.strerror or type(exc).__name__)


def disk_trouble(exc: BaseException | None) -> OSError | None:
    """The full disk, read-only file system or too-long name behind ``exc``, wherever it sits in the chain
    (a torch, sqlite, Optuna or Ray error raised because of it; a Ray task error's ``cause``), as an
    ``OSError`` with its errno (and file name when one was known); None when none is behind it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FIXES:
            return exc
        text = str(exc)
        for code in DISK_FIXES:
            if os.strerror(code) in text or f"[Errno {code}]" in text:  # a remote traceback, kept as text
                return OSError(code, os.strerror(code))
        code = next((c for words, c in SQLITE_CAUSES.items() if words in text), None)
        if code is not None:
            return OSError(code, os.strerror(code))
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the task's exception there
        exc = exc.__cause__ or (cause if isinstance(cause, BaseException) else None) or exc.__context__
    return None


def disk_message(
    trouble: OSError, how: str = "then run the same command again: it continues from the files already written"
) -> str:
    """The one line for a run that ``trouble`` stopped: the path, the cause, the fix and, for a write, how the
    run continues (every result file is written atomically, so earlier ones are intact)."""
    path = trouble.filename or "a result file"
    if trouble.errno == errno.ENAMETOOLONG:  # a path the user gave (read or written): nothing ran yet
        return f"{path}: {os_cause(trouble)}; give a shorter path"
    what = (
        f"stopped with {trouble.strerror}"
        if isinstance(trouble, LowDiskSpace)
        else f"cannot write ({os_cause(trouble)})"
    )
    return f"{path}: {what}; {DISK_FIXES[trouble.errno]}; {how}"


def stopped_by_disk(exc: Exception, how: str) -> None:
    """Raise :class:`WriteStopped` with ``how`` when a full or read-only disk is behind ``exc``."""
    trouble = disk_trouble(exc)
    if trouble is not None and trouble.errno != errno.ENAMETOOLONG:
        raise WriteStopped(trouble, how) from exc


def exit_status(command: Callable[[], int]) -> int:
    """Run ``command``; a user's mistake (2), failed trials (3), a Ctrl-C (130) or a full / read-only disk
    (1; a too-long path 2) is one line on stderr and its exit status, never a traceback."""
    try:
        return command()
    except (UserError, TrialsFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, TrialsFailed) else 2
    except KeyboardInterrupt as exc:
        how = str(exc) if isinstance(exc, Interrupted) else "run the same command again to continue where it stopped"
        print(f"interrupted; {how}", file=sys.stderr)
        return 130
    except WriteStopped as exc:
        print(f"error: {disk_message(exc.trouble, exc.how)}", file=sys.stderr)
        return 1
    except Exception as exc:
        trouble = disk_trouble(exc)
        if trouble is None:
            raise
        print(f"error: {disk_message(trouble)}", file=sys.stderr)
        return 2 if trouble.errno == errno.ENAMETOOLONG else 1
