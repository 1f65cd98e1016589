"""Issue 24, class 1: Ctrl-C at every stage of ``--search`` (before the first epoch, mid-trials, while the
search writes its results, in the analysis, mid-retraining) exits 130 with one line that says how to
continue, marks no trial as stopped by ASHA, writes none (or, while writing, all) of that stage's final
results, never starts the next stage, and leaves a folder the same command finishes. SIGTERM (``kill``, a
batch scheduler's stop) is a Ctrl-C: two of the stages get it instead."""

from __future__ import annotations

import signal
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pandas as pd
import pytest

import fer_tune.pipeline
import fer_tune.search.outputs
from fer_tune.cli import main
from fer_tune.files import ctrl_c_held
from fer_tune.search.runner import Progress
from fer_tune.search.tensorboard_runs import TrialBoard

pytestmark = pytest.mark.slow
INTERRUPTED = "interrupted; run the same command again to continue"
BOTH_AT_ONCE = """
    model: vgg
    budget: {max_epochs: 2, grace_period: 2, reduction_factor: 2, num_trials: 2, max_concurrent: 2}
    resources: {gpus_per_trial: 0, cpus_per_trial: 1}
    fixed: {width: 0.0625, batch_size: 64, scheduler: none, optimizer: adam}
    space:
      lr: {loguniform: [1.0e-4, 1.0e-2]}
    paper_trial: {lr: 1.0e-3}
"""
SEARCH_RESULTS = ("trials.csv", "best_config.yaml", "best_model.pt")
REPORT_RESULTS = ("retrain_runs.csv", "scores.csv", "winners.csv", "report.md", "ensemble.yaml")


def _ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)  # in this process's main thread, where Ctrl-C lands


def _sigterm() -> None:
    signal.raise_signal(signal.SIGTERM)  # as `kill PID` (Ray's own handler, set by the suite's Ray, would exit)


@contextmanager
def _ctrl_c_at_first_line_of(label: str, monkeypatch, stop: Callable[[], None] = _ctrl_c) -> Iterator[None]:
    """Ctrl-C (or ``stop``) in the driver just after the first progress line whose label starts with ``label``."""
    line = Progress.line

    def interrupting(self, *args):
        shown = line(self, *args)
        if self.label.startswith(label):
            stop()
        return shown

    with monkeypatch.context() as patch:
        patch.setattr(Progress, "line", interrupting)
        yield


def _run(command: list[str], capsys) -> tuple[int, str]:
    status = main(command)
    out, err = capsys.readouterr()
    return status, out + err


def _missing(folder: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if (folder / name).exists()]


def _only_fer_tune_lines(out: str) -> None:
    assert "Traceback" not in out and "WARNING" not in out and "experiment_analysis" not in out, out[-3000:]


def test_ctrl_c_at_every_stage_exits_130_writes_no_result_and_the_command_continues(
    ray_local, chain_csv, tmp_path, capsys, monkeypatch
):
    space = tmp_path / "both.yaml"
    space.write_text(textwrap.dedent(BOTH_AT_ONCE))
    folder = tmp_path / "r" / "both"
    command = ["--search", str(space), "--data", str(chain_csv), "--results", str(tmp_path / "r")]
    command += ["--top-k", "1", "--seeds", "2"]

    # before the first epoch: Tune has started both trials (all it was asked for), none has reported
    started = []

    def second_start(self, iteration, trials, trial, **info) -> None:
        started.append(trial.trial_id)
        if len(started) == 2:
            _ctrl_c()

    with monkeypatch.context() as patch:
        patch.setattr(TrialBoard, "on_trial_start", second_start, raising=False)
        status, out = _run(command, capsys)
    assert status == 130 and INTERRUPTED in out, out[-3000:]
    assert (folder / "manifest.yaml").is_file(), "the folder must stay, to continue"
    assert "no trial produced a score" not in out and not _missing(folder, SEARCH_RESULTS)
    _only_fer_tune_lines(out)

    # mid-trials, every trial started (so none is "left to start"): by SIGTERM, which Tune takes as a Ctrl-C
    with _ctrl_c_at_first_line_of("search", monkeypatch, _sigterm):
        status, out = _run(command, capsys)
    assert status == 130 and INTERRUPTED in out, out[-3000:]
    assert not _missing(folder, SEARCH_RESULTS), "an interrupted search wrote final results"
    assert "search both done" not in out and "ASHA ran" not in out and "retraining the top" not in out
    _only_fer_tune_lines(out)
    study = optuna.load_study(study_name="both", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert not any("ASHA" in str(t.user_attrs.get("fer_tune_status", "")) for t in study.trials)

    # while the search writes its results: they are written whole, then the command stops
    write_csv = fer_tune.search.outputs.write_csv_atomic

    def interrupted_write(*args, **kwargs):
        _ctrl_c()
        return write_csv(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(fer_tune.search.outputs, "write_csv_atomic", interrupted_write)
        status, out = _run(command, capsys)
    assert status == 130 and INTERRUPTED in out, out[-3000:]
    assert len(_missing(folder, SEARCH_RESULTS)) == len(SEARCH_RESULTS), "a Ctrl-C while writing left a partial set"
    assert "retraining the top" not in out and not (folder / "analysis.md").exists(), out[-3000:]

    # in the analysis, after the search wrote its results (SIGTERM): the retraining does not start
    with monkeypatch.context() as patch:
        patch.setattr(fer_tune.pipeline, "analyze", lambda folder: _sigterm())
        status, out = _run(command, capsys)
    assert status == 130 and INTERRUPTED in out, out[-3000:]
    assert "retraining the top" not in out and not (folder / "retrain.yaml").exists(), out[-3000:]

    # mid-retraining, every run started
    with _ctrl_c_at_first_line_of("retraining", monkeypatch):
        status, out = _run(command, capsys)
    assert status == 130 and INTERRUPTED in out, out[-3000:]
    assert "scoring" not in out and not _missing(folder, REPORT_RESULTS), out[-3000:]

    # the same command finishes it: every trial and run with all its epochs, none called ASHA-stopped
    status, out = _run(command, capsys)
    assert status == 0, out[-3000:]
    _only_fer_tune_lines(out)
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 2 and (trials.epochs_run == 2).all() and (trials.status == "completed").all(), trials
    runs = pd.read_csv(folder / "retrain_runs.csv")
    assert len(runs) == 2 and (runs.epochs_run == 2).all(), runs
    assert (folder / "report.md").is_file()


def test_a_ctrl_c_while_results_are_written_waits_for_them_then_stops():
    """Each Ctrl-C inside ``ctrl_c_held`` lets the block finish, then raises; the handler from before is back."""
    before, written = signal.getsignal(signal.SIGINT), []
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_held():
            _ctrl_c()
            written.append("trials.csv")
            _ctrl_c()
            written.append("best_config.yaml")
    assert written == ["trials.csv", "best_config.yaml"] and signal.getsignal(signal.SIGINT) is before
    with ctrl_c_held():  # no Ctrl-C: nothing raised
        written.append("report.md")
    assert signal.getsignal(signal.SIGINT) is before
