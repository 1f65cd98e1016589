"""Reliability: killed drivers, dying workers, concurrent searches, bad inputs, safety."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from fer_tune.checkpoint import save_checkpoint
from fer_tune.cli import main
from fer_tune.config import read_yaml
from fer_tune.errors import UserError
from fer_tune.search import search_lock

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _space(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def _launch(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", str(ROOT / "launch.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})}, **kw)


SEQUENTIAL = """
    model: vgg
    budget: {max_epochs: 2, grace_period: 2, reduction_factor: 2, num_trials: 2, max_concurrent: 1}
    resources: {gpus_per_trial: 0, cpus_per_trial: 2}
    fixed: {width: 0.125, batch_size: 32, scheduler: none, optimizer: adam}
    space:
      lr: {loguniform: [1.0e-4, 1.0e-2]}
    paper_trial: {lr: 1.0e-3}
"""


def test_killed_driver_resumes_without_losing_or_retraining_trials(tiny_csv, tmp_path):
    space = _space(tmp_path, "killme", SEQUENTIAL)
    args = ["--search", str(space), "--data", str(tiny_csv), "--results", str(tmp_path / "r"), "--no-retrain"]
    first = _launch(args)
    finished: dict[str, float] = {}
    deadline = time.time() + 240
    for line in first.stdout:
        match = re.search(r"\] search killme (\w+) epoch 2/2: val_acc ([0-9.]+)", line)
        if match:
            finished[match.group(1)] = float(match.group(2))
        if len(finished) == 1 or time.time() > deadline:
            break
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
    first.wait()
    assert len(finished) == 1, "the first run did not finish a trial in time"

    second = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    # the count in this line may lag the last report (Ray's state snapshot); the rows below are what counts
    assert re.search(r"resuming search killme .*: \d+ trial\(s\) already finished", second.stdout)
    table = pd.read_csv(tmp_path / "r" / "killme" / "trials.csv")
    assert len(table) == 2 and (table.epochs_run == 2).all()
    for trial_id, val_acc in finished.items():
        row = table.set_index("trial_id").loc[trial_id]
        assert row.last_val_acc == pytest.approx(val_acc, abs=1e-4)  # kept, unchanged
        progress = pd.read_csv(Path(row.trial_path) / "progress.csv")
        assert progress.epoch.tolist() == [1, 2]  # trained once, not again from scratch


def test_dying_worker_is_retried_from_its_last_checkpoint(tiny_csv, tmp_path):
    space = _space(tmp_path, "crashy", """
        model: vgg
        budget: {max_epochs: 3, grace_period: 3, reduction_factor: 2, num_trials: 1, max_concurrent: 1}
        resources: {gpus_per_trial: 0, cpus_per_trial: 2}
        fixed: {width: 0.125, batch_size: 32}
        space:
          lr: {loguniform: [1.0e-3, 1.0e-2]}
    """)
    marker_dir = tmp_path / "marker"
    marker_dir.mkdir()
    proc = _launch(["--search", str(space), "--data", str(tiny_csv), "--results", str(tmp_path / "r"), "--no-retrain"],
                   env={"FER_TUNE_TEST_CRASH_ONCE_DIR": str(marker_dir)})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert (marker_dir / "crashed").is_file()  # the worker really died once
    assert "failed; Ray retries it" in out
    table = pd.read_csv(tmp_path / "r" / "crashy" / "trials.csv")
    row = table.iloc[0]
    assert row.status == "completed" and row.epochs_run == 3 and row.restarts == 1
    progress = pd.read_csv(Path(row.trial_path) / "progress.csv")
    assert progress.epoch.tolist() == [1, 2, 3]  # continued at epoch 2, did not restart at 1


def test_second_search_with_the_same_name_is_refused(tiny_csv, tmp_path, capsys):
    folder = tmp_path / "vgg-smoke"
    folder.mkdir(parents=True)
    with search_lock(folder):
        rc = main(["--search", "vgg", "--smoke", "--data", str(tiny_csv), "--results", str(tmp_path)])
    assert rc == 2
    assert "another search with this name is running (pid" in capsys.readouterr().err
    assert not (folder / "trials.csv").exists()


def test_base_checkpoint_of_another_architecture_is_refused_before_anything(tiny_csv, tmp_path, capsys):
    other = save_checkpoint(tmp_path / "eff.pt", {"model": {}, "config": {"model": "effnetv2s"}})
    rc = main(["--search", "vgg_spinal", "--smoke", "--data", str(tiny_csv), "--results", str(tmp_path / "r"),
               "--base-checkpoint", str(other)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "eff.pt: this checkpoint is a 'effnetv2s' model, but 'vgg_spinal' transfers from 'vgg'" in err
    assert not (tmp_path / "r").exists()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    assert main(["--search", "vgg_spinal", "--smoke", "--data", str(tiny_csv), "--results", str(tmp_path / "r"),
                 "--base-checkpoint", str(broken)]) == 2
    assert "broken.pt: not a readable checkpoint" in capsys.readouterr().err


def test_unwritable_results_folder(tiny_csv, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["--search", "vgg", "--smoke", "--data", str(tiny_csv), "--results", str(blocker / "results")])
    assert rc == 2 and "results folder is not writable" in capsys.readouterr().err


def test_yaml_is_read_with_the_safe_loader(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="YAML syntax error"):
        read_yaml(evil)


def test_ray_starts_without_a_public_dashboard(monkeypatch):
    import ray

    from fer_tune.tune_runner import ray_session

    seen, stopped = {}, []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "shutdown", lambda: stopped.append(True))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_session(lambda s: None):
        pass
    assert seen["include_dashboard"] is False and seen["address"] is None
    assert stopped == [True]  # the Ray it started, it stops


def test_nothing_touches_the_network_when_building_and_training(tiny_data, monkeypatch):
    from fer_tune.config import TrainConfig
    from fer_tune.engine import Trainer
    from fer_tune.models import create_model

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("vgg_spinal", "effnetv2s_spinal"):
        create_model(name, width=0.125)
    from fer_tune.models.vit import FerViT

    FerViT("spinal", num_hidden_layers=1)
    history = Trainer(TrainConfig(model="vgg", width=0.125, epochs=1, batch_size=64), tiny_data.role("train"),
                      tiny_data.role("val")).fit()
    assert [r.epoch for r in history] == [1] and not history[0].diverged


def test_killed_retraining_resumes_and_keeps_finished_runs(tiny_csv, tmp_path):
    """SIGKILL during `--retrain`: the same command continues, says so, keeps the finished runs."""
    from fer_tune.config import write_yaml
    from fer_tune.manifest import SearchManifest
    from fer_tune.search_space import load_search_space

    space = load_search_space(str(_space(tmp_path, "again", SEQUENTIAL)))
    folder = tmp_path / "r" / "again"  # a finished search, as its files say
    folder.mkdir(parents=True)
    SearchManifest(name="again", space=space.path, model="vgg", base=None, metric="val_acc", mode="max", smoke=False,
                   seed=0, budget={}).write(folder)
    write_yaml(folder / "best_config.yaml", space.train_config({"lr": 1e-3}, epochs=1).to_dict())
    pd.DataFrame({"trial": [1], "trial_id": ["a"], "lr": [1e-3], "best_val_acc": [0.5], "status": ["completed"],
                  "trial_path": [str(folder / "t")], "epochs_run": [2], "cpu_hours": [0.0], "gpu_hours": [0.0]}
                 ).to_csv(folder / "trials.csv", index=False)
    common = ["--data", str(tiny_csv), "--results", str(tmp_path / "r")]
    retrain = ["--retrain", "again", "--top-k", "1", "--seeds", "2", "--cpus-per-trial", "2", *common]
    first = _launch(retrain)
    finished = None
    deadline = time.time() + 240
    for line in first.stdout:
        match = re.search(r"\] retraining again (\w+) epoch 1/1: val_acc", line)
        if match or time.time() > deadline:
            finished = match and match.group(1)
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert finished, "the first retraining did not finish a run in time"

    second = subprocess.run([sys.executable, str(ROOT / "launch.py"), *retrain], capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert re.search(r"resuming the retraining of again: \d of 2 runs already finished", second.stdout)
    runs = pd.read_csv(tmp_path / "r" / "again" / "retrain_runs.csv")
    assert sorted(runs.seed) == [0, 1]
    (kept,) = (tmp_path / "r" / "again" / "retrain").glob(f"*{finished}")
    assert pd.read_csv(kept / "progress.csv").epoch.tolist() == [1]  # trained once, not again
    assert (tmp_path / "r" / "again" / "report.md").is_file()
