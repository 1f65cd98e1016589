"""Run folders: where a search or a training run writes, and the rules that keep everything else safe.

- A run name is one plain folder name (no ``..``, no ``/``, not absolute): a run never writes
  outside ``--results``.
- ``--fresh`` deletes only a folder that fer-tune's search made (it holds ``manifest.yaml``), and
  there only the files and folders fer-tune writes (:data:`SEARCH_OUTPUTS`); anything else stays.
- A run that fails before its first epoch leaves no folder behind that it made itself.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fer_tune.errors import TrialsFailed, UserError, os_cause
from fer_tune.manifest import MANIFEST
from fer_tune.search_folder import SearchFolder

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")

# everything a search, its retraining and its report write into the search folder
SEARCH_OUTPUTS = SearchFolder.outputs()


def check_run_name(name: str, option: str = "--name", fix: str = "use --results to choose where runs go") -> str:
    """``name`` if it is one plain folder name; else a :class:`UserError` naming where it came from
    (``option``), what is allowed and ``fix``."""
    if not NAME_PATTERN.fullmatch(name or "") or name in (".", ".."):
        raise UserError(
            f"{option} {name!r}: a run name is one plain folder name (letters, digits, '.', '_', '+', '-', at most "
            f"100, starting with a letter or digit); no '/', '..' or absolute paths: {fix}"
        )
    return name


def make_run_folder(path: Path) -> Path:
    """Create ``path`` (and check it is writable) before anything starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"{path}: results folder is not writable ({os_cause(exc)}); choose another with --results"
        ) from None
    return path


def is_search_folder(folder: Path) -> bool:
    """True when fer-tune's search made ``folder`` (it holds the manifest)."""
    return (folder / MANIFEST).is_file()


def require_search_folder(folder: Path, who: str = "the retraining") -> Path:
    """``folder`` if a fer-tune search made it; else a :class:`UserError` (nothing is written there)."""
    if not is_search_folder(folder):
        raise UserError(
            f"{folder}: not a folder fer-tune's search made (no {MANIFEST}), so {who} "
            "will not write (or delete) there; run --search again with this version of fer-tune"
        )
    return folder


def check_search_folder(folder: Path) -> None:
    """A search may write into a new or empty folder, or one a fer-tune search made; never into a
    folder holding other files."""
    if not folder.is_dir() or is_search_folder(folder):
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name != ".lock")
    if foreign:
        raise UserError(
            f"{folder}: this folder was not made by a fer-tune search (no {MANIFEST}) and holds {len(foreign)} "
            f"other file(s), e.g. {foreign[0]!r}; fer-tune writes, and deletes, only in folders it made: "
            "choose another --name or --results"
        )


TRAIN_CONFIG_HEADER = "# fer-tune train config"  # the first line of a train run's config.yaml: fer-tune made the folder
TRAIN_OUTPUTS = ("config.yaml", "metrics.csv", "best.pt", "last.pt")


def is_train_folder(folder: Path) -> bool:
    """True when a fer-tune train run made ``folder`` (its config.yaml starts with fer-tune's header)."""
    try:
        with open(folder / "config.yaml", "rb") as handle:
            return handle.read(len(TRAIN_CONFIG_HEADER)).decode("ascii", "replace") == TRAIN_CONFIG_HEADER
    except OSError:
        return False


def check_train_folder(folder: Path) -> None:
    """A train run writes into a new or empty folder, or over the files of a train run fer-tune made
    there; never into a folder holding other files (a user's, or a search's)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UserError(f"{folder}: exists and is not a folder; choose another --name or --results")
    if not folder.is_dir() or is_train_folder(folder):
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name != SearchFolder.LOCK)
    if foreign:
        raise UserError(
            f"{folder}: this folder was not made by a fer-tune train run (no config.yaml of fer-tune's) and "
            f"holds {len(foreign)} file(s), e.g. {foreign[0]!r}, that training would replace or mix with "
            f"({', '.join(TRAIN_OUTPUTS)}); fer-tune writes only into folders it made: choose another --name or "
            "--results"
        )


def clear_search_outputs(folder: Path) -> list[str]:
    """``--fresh``: delete what fer-tune wrote in ``folder`` (a folder it made), nothing else; returns
    the names of anything left in place."""
    if not is_search_folder(folder):
        check_search_folder(folder)
        return []
    for name in SEARCH_OUTPUTS:
        target = folder / name
        if name == ".lock" or not (target.exists() or target.is_symlink()):
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock")


@contextmanager
def train_folder(folder: Path) -> Iterator[None]:
    """The folder of one train run (new or empty, or a train run's own: :func:`check_train_folder`), made
    and locked for this process: a second run with this ``--name`` is refused, naming the one running. A
    run that fails or is stopped before its first epoch ends removes the folders it made."""
    check_train_folder(folder)
    made = missing_folders(folder)
    make_run_folder(folder)
    with folder_lock(folder, "train run"):
        check_train_folder(folder)  # as it is now that it is ours
        with removed_if_nothing_ran(folder, ("metrics.csv",), keep_on_interrupt=False, made=made):
            yield


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


@contextmanager
def removed_if_nothing_ran(
    folder: Path, progress_markers: tuple[str, ...], keep_on_interrupt: bool = True, made: list[Path] | None = None
) -> Iterator[None]:
    """Remove ``folder`` and the parents the run made (``made``, default: those missing now; a parent only
    while empty) when the block fails, the folder did not exist before, and no file named in
    ``progress_markers`` exists below it (no epoch finished): a failed start leaves nothing behind.
    Failed trials (their results are written) keep it, and so does an interruption unless
    ``keep_on_interrupt`` is off (a search's folder stays resumable: its trials may be in a remote storage)."""
    made = missing_folders(folder) if made is None else made
    try:
        yield
    except TrialsFailed:
        raise
    except KeyboardInterrupt:
        if not keep_on_interrupt:
            _remove_if_nothing_ran(folder, made, progress_markers)
        raise
    except BaseException:
        _remove_if_nothing_ran(folder, made, progress_markers)
        raise


def _remove_if_nothing_ran(folder: Path, made: list[Path], progress_markers: tuple[str, ...]) -> None:
    ran = any(next(folder.rglob(marker), None) for marker in progress_markers) if folder.is_dir() else False
    if folder not in made or not folder.is_dir() or ran:
        return
    shutil.rmtree(folder, ignore_errors=True)
    for parent in made[1:]:  # another run may have put its folder there since: only empty ones go
        try:
            parent.rmdir()
        except OSError:
            break


@contextmanager
def folder_lock(folder: Path, job: str) -> Iterator[None]:
    """An exclusive lock on a run folder for one process's ``job`` (search, retraining, analysis, train
    run), released even by SIGKILL: two at once in one folder are refused with the other's pid and job."""
    handle = open(folder / SearchFolder.LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid, _, other = handle.read().strip().partition("\n")
        handle.close()
        raise UserError(
            f"{folder}: another {other or 'search'} with this name is running ({pid or 'another process'}); wait "
            "for it to finish, or give this one another --name"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n{job}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
