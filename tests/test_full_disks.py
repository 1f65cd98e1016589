"""Reliability round 4 (issue 45), class 2: full and read-only disks, too-long names. Each is one ``error:``
line naming the path and the cause, exit 2 before anything starts (1 mid-run), earlier files intact; a search
a full disk stopped continues with the same command once space is back.

The disks are real: a tmpfs of a chosen size, or a read-only bind mount (root ignores file modes), in a mount
namespace of the test's own (``unshare -m``), so nothing outside the test sees them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fer_tune.cli import main
from fer_tune.search.disk_guard import FLOOR_BYTES, MIB

HELPERS = """
import contextlib, io, json, os, subprocess, sys
from pathlib import Path
from fer_tune.cli import main

root = Path(sys.argv[1])
out = {}

def mount(*args):
    subprocess.run(["mount", *map(str, args)], check=True)

def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return [code, err.getvalue().strip().splitlines()]
"""


def _can_unshare() -> str | None:
    """Why mount namespaces cannot be used here (None: they can)."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "needs Linux's unshare"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return None if probe.returncode == 0 else "unshare -m is not allowed here (needs root or CAP_SYS_ADMIN)"


NO_UNSHARE = _can_unshare()


def _in_own_mounts(script: str, *args: object, timeout: int) -> dict:
    """Run ``script`` (after :data:`HELPERS`) in a mount namespace of its own; its last line is JSON."""
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", HELPERS + script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _one_error_line(result: list, status: int, *words: str) -> str:
    code, err = result
    assert code == status and len(err) == 1 and err[0].startswith("error: "), result
    for w in words:
        assert w in err[0], err[0]
    return err[0]


@pytest.mark.skipif(NO_UNSHARE is not None, reason=str(NO_UNSHARE))
def test_a_full_or_read_only_disk_is_one_line_naming_the_path_and_cause(chain_csv, tmp_path):
    """A checkpoint that does not fit raised torch's "unexpected pos" RuntimeError and left its temporary
    file; a train run on a full disk, and --report / --analyze / --retrain / train / a search on a read-only
    folder, ended in tracebacks."""
    script = """
import torch
from fer_tune.training.checkpoint import save_checkpoint

small = root / "small"; small.mkdir(); mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", small)
save_checkpoint(small / "w.pt", {"w": torch.zeros(10)})
try:
    save_checkpoint(small / "w.pt", {"w": torch.zeros(2**19)})  # 2 MiB on a 1 MiB disk
except OSError as exc:
    out["save"] = [exc.errno, exc.filename, sorted(os.listdir(small)), torch.load(small / "w.pt")["w"].numel()]
os.remove(small / "w.pt")
out["train_full"] = run(["train", "--smoke", "--data", sys.argv[2], "--epochs", 1, "--results", small, "--name", "t"])
out["left_by_train"] = sorted(str(p.relative_to(small)) for p in small.rglob("*"))
out["search_full"] = run(["--search", "vgg_spinal", "--smoke", "--results", small])

ro = root / "ro"; ro.mkdir(); mount("--bind", ro, ro); mount("-o", "remount,bind,ro", ro)
rw = root / "rw"; (rw / "s").mkdir(parents=True); (rw / "s" / "manifest.yaml").write_text("kept")
mount("--bind", rw / "s", rw / "s"); mount("-o", "remount,bind,ro", rw / "s")
for name, argv in {
    "report": ["--report", "--results", ro],
    "train_ro": ["train", "--smoke", "--results", ro],
    "search_ro": ["--search", "vgg_spinal", "--smoke", "--results", ro],
    "analyze": ["--analyze", "s", "--results", rw],
    "retrain": ["--retrain", "s", "--smoke", "--results", rw],
}.items():
    out[name] = run(argv)
out["kept"] = (rw / "s" / "manifest.yaml").read_text()
print(json.dumps(out))
"""
    out = _in_own_mounts(script, tmp_path, chain_csv, timeout=300)
    errno_, filename, left, kept = out["save"]
    assert errno_ == 28 and filename == str(tmp_path / "small" / "w.pt")
    assert left == ["w.pt"] and kept == 10  # no temporary file; the earlier file whole
    line = _one_error_line(out["train_full"], 1, "/small/train/t/best.pt: cannot write (no space left on the device)")
    assert "free some space; no epoch had finished, so nothing was kept: run the same command again" in line
    assert out["left_by_train"] == []  # the run that kept nothing left no folder
    _one_error_line(out["search_full"], 2, "MiB free on its device; a search keeps at least 16 MiB free")
    for name in ("report", "train_ro", "search_ro"):
        _one_error_line(out[name], 2, f"--results {tmp_path / 'ro'}: {tmp_path / 'ro'} is on a read-only file system")
    for name in ("analyze", "retrain"):
        _one_error_line(out[name], 2, f"{tmp_path / 'rw' / 's'} is on a read-only file system")
    assert out["kept"] == "kept"


def test_a_name_over_255_bytes_is_one_line(tmp_path, capsys):
    """Path.exists() raised ENAMETOOLONG: a traceback, whether the path was to read or to write."""
    long = tmp_path / ("a" * 300)
    for argv in (
        ["--search", "vgg_spinal", "--smoke", "--results", str(long)],
        ["train", "--smoke", "--results", str(long)],
        ["data", f"{long}.csv"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert "300 bytes; a file or folder name is at most 255 bytes" in err or "name too long" in err, err
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.slow
@pytest.mark.skipif(NO_UNSHARE is not None, reason=str(NO_UNSHARE))
def test_a_search_a_full_disk_stopped_continues_with_the_same_command(chain_csv, tmp_path):
    """ENOSPC mid-search gave 9 tracebacks and Optuna's "invalid data in the commit", and Ray's half-written
    state lost the running trials. The search now stops while there is still room for Tune's state, in one
    line; once space is back the same command finishes every trial."""
    base_run = ["train", "--smoke", "--data", str(chain_csv), "--epochs", "1", "--results", str(tmp_path / "b")]
    assert main([*base_run, "--name", "base"]) == 0
    script = """
import pandas as pd, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
disk = root / "disk"; disk.mkdir(); mount("-t", "tmpfs", "-o", f"size={sys.argv[2]}", "tmpfs", disk)
argv = ["--search", "vgg_spinal", "--smoke", "--data", sys.argv[4], "--results", disk, "--no-retrain",
        "--base-checkpoint", sys.argv[3], "--trials", 2, "--max-epochs", 2]
out["first"] = run(argv)
out["files"] = sorted(os.listdir(disk / "vgg_spinal-smoke"))
mount("-o", "remount,size=64m", disk)
out["again"] = run(argv)
trials = pd.read_csv(disk / "vgg_spinal-smoke" / "trials.csv")
out["trials"] = trials[["status", "epochs_run"]].values.tolist()
print(json.dumps(out))
"""
    base = tmp_path / "b" / "train" / "base" / "best.pt"
    out = _in_own_mounts(script, tmp_path, FLOOR_BYTES + MIB, base, chain_csv, timeout=400)
    _one_error_line(
        out["first"], 1, f"{tmp_path / 'disk' / 'vgg_spinal-smoke'}: stopped with", "MiB left on the device, under"
    )
    assert "then run the same command again: it continues from the files already written" in out["first"][1][0]
    assert "optuna.db" in out["files"] and "ray" in out["files"]
    assert out["again"] == [0, []], out["again"]
    assert len(out["trials"]) == 2, out["trials"]
    assert all(status in ("completed", "stopped by ASHA") and epochs >= 1 for status, epochs in out["trials"]), out
