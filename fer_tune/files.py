"""Every result file is written atomically: to a temporary file beside it, then renamed over the
real name, so a crash mid-write leaves the old file (or none), never half a file; a stage's set of
result files is written whole (:func:`ctrl_c_held`)."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

NAME_MAX = 255  # bytes in one file or folder name on Linux, macOS and Windows file systems
FILE_MODE = 0o644  # a new result file: readable by others, as open() would make it (a temporary file is 0600)


def cache_dir() -> Path:
    """fer-tune's cache folder: ``$XDG_CACHE_HOME/fer-tune``, else ``~/.cache/fer-tune`` (an empty or
    relative ``XDG_CACHE_HOME`` is ignored, as the XDG Base Directory spec says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "fer-tune"


def check_working_folder() -> None:
    """The current folder still exists (every relative path is read against it): else one error line,
    before torch or Ray is imported."""
    try:
        os.getcwd()
    except FileNotFoundError:
        from fer_tune.errors import UserError

        raise UserError(
            f"the current folder {os.environ.get('PWD', '')} no longer exists (deleted or moved); cd to a folder that "
            "exists and run the command again"
        ) from None


def check_creatable(path: str | os.PathLike, option: str) -> Path:
    """``path`` can be made (as a file or folder) before any work starts: its nearest existing ancestor is a
    writable folder and it is no special file (FIFO, device); else a :class:`UserError` naming ``option``."""
    from fer_tune.errors import UserError

    path = Path(path)
    long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise UserError(
            f"{option} {path}: the name {long[:40]}... is {len(os.fsencode(long))} bytes; a file or folder name is "
            f"at most {NAME_MAX} bytes: give a shorter one"
        )
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise UserError(f"{option} {path}: is a special file (a FIFO or device), not a file fer-tune can write")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if existing != path and not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, not a folder; give a path in a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK):
        why = "is on a read-only file system" if os.statvfs(folder).f_flag & os.ST_RDONLY else "is not writable"
        raise UserError(f"{option} {path}: {folder} {why}; give a path you may write")
    return path


def check_csv_replaceable(path: str | os.PathLike, option: str, columns: Sequence[str], kind: str) -> Path:
    """``path`` can take a CSV with ``columns``: creatable, not a folder and, if it exists, a ``kind`` with
    that header (fer-tune replaces only its own files); else a :class:`UserError` naming ``option``."""
    from fer_tune.errors import UserError

    out = check_creatable(path, option)
    if out.is_dir():
        raise UserError(f"{option} {out}: is a folder; {option} names the CSV file to write")
    if out.exists():
        with open(out, encoding="utf-8", errors="replace") as f:
            head = f.readline().strip()
        if head != ",".join(columns):
            raise UserError(
                f"{option} {out}: exists and is not {kind} fer-tune wrote; fer-tune never overwrites other "
                f"files: choose another {option}"
            )
    return out


@contextmanager
def ctrl_c_held() -> Iterator[None]:
    """A Ctrl-C inside waits for the block to end, then raises KeyboardInterrupt: a stage's result files
    are written all together or not at all (the same command then goes on from them)."""
    if threading.current_thread() is not threading.main_thread():  # no handler can be set from here
        yield
        return
    caught: list[int] = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before if before is not None else signal.SIG_DFL)
    if caught:
        raise KeyboardInterrupt


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], *, sync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path in ``path``'s folder, then rename it to ``path``. A write that a
    full or read-only disk (or a too-long name) stops leaves no temporary file and raises an ``OSError``
    naming ``path``, whatever the writer raised (torch.save's own error, say)."""
    from fer_tune.errors import disk_trouble

    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else FILE_MODE)
        if sync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        trouble = disk_trouble(exc) if isinstance(exc, Exception) else None
        if trouble is not None:
            raise OSError(trouble.errno, trouble.strerror, str(path)) from exc
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """A text file (Markdown, YAML, ...), atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """A binary file, atomically."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """A CSV of ``frame`` (no index), atomically."""
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))
