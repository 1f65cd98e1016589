"""A search stops while its disk still has room for Tune's own state: a full disk mid-write would leave
Tune's experiment files half written, and the same command could not continue from them."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from fer_tune.errors import LowDiskSpace, UserError

MIB = 2**20
FLOOR_BYTES = 16 * MIB  # always kept free: Tune's experiment state, Optuna's study, the result files


def folder_bytes(path: str | os.PathLike) -> int:
    """The size of the files under ``path``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def free_bytes(path: Path) -> int:
    """Free bytes on the device that holds ``path`` (or its nearest existing parent)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free


def check_room(root: Path) -> None:
    """Before a search starts: the floor is free where it writes, else one error line (exit 2)."""
    free = free_bytes(root)
    if free < FLOOR_BYTES:
        raise UserError(
            f"{root}: only {free / MIB:.1f} MiB free on its device; a search keeps at least "
            f"{FLOOR_BYTES // MIB} MiB free for its state: free some space, or give --results another folder"
        )


def disk_guard(root: Path):
    """The Tune callback that stops the search gracefully (Tune's own Ctrl-C stop, which saves its state)
    once the free space under ``root`` falls below the floor plus two checkpoints per running trial (the
    new one is written before the old one goes); :attr:`stopped` then holds why."""
    from ray.tune import Callback

    class DiskGuard(Callback):
        def __init__(self) -> None:
            self.largest = 0  # the largest trial checkpoint seen, in bytes
            self.stopped: LowDiskSpace | None = None

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            if os.path.isdir(checkpoint.path):
                self.largest = max(self.largest, folder_bytes(checkpoint.path))
            self._check(sum(t.status == "RUNNING" for t in trials))

        def _check(self, running: int) -> None:
            need = FLOOR_BYTES + 2 * max(running, 1) * self.largest
            free = free_bytes(root)
            if free < need and self.stopped is None:
                self.stopped = LowDiskSpace(
                    f"{free / MIB:.1f} MiB left on the device, under the {need / MIB:.1f} MiB kept free for the "
                    "next checkpoints and Tune's state",
                    str(root),
                )
                os.kill(os.getpid(), signal.SIGINT)  # Tune's graceful stop: it saves its state

    return DiskGuard()
