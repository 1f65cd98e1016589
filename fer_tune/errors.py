"""The one exception type for a user's mistake: the CLI prints its message and exits non-zero; and the
words for why a file could not be written."""

import errno

DEPLOY_INSTALL = 'pip install -e ".[deploy]"'  # what a missing optional package of predict / export asks for


class UserError(Exception):
    """A problem with the user's input (a file, a field, an option), with what to do about it.

    The message names the file / row / key and the fix; the CLI prints it on one line
    (no traceback) and exits with status 2.
    """


class TrialsFailed(Exception):
    """Trials of a search ended in error: its results are written but incomplete (exit 3)."""


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


def os_cause(exc: OSError) -> str:
    """Why ``exc`` happened, in the words a user acts on (no space left / read-only / name too long)."""
    return OS_CAUSES.get(exc.errno, exc.strerror or type(exc).__name__)
