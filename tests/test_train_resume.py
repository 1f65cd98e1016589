"""``launch.py train`` stopped by Ctrl-C or SIGTERM says how it continues, and ``train --resume RUN``
continues it from last.pt to the same numbers an uninterrupted run reaches; a search's base run
stopped half-way is continued, never taken as finished."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fer_tune.cli import main
from fer_tune.data.demo import DemoSpec, write_demo_csv
from fer_tune.data.fer2013 import load_fer
from fer_tune.search.base_model import resolve_base
from fer_tune.search.run import SearchOptions
from fer_tune.search.space_file import load_search_space
from fer_tune.training.checkpoint import load_checkpoint
from fer_tune.training.engine import Trainer

RECIPE = [
    "--model", "vgg", "--width", "0.0625", "--epochs", "3", "--batch-size", "16",
    "--optimizer", "adam", "--lr", "0.002", "--scheduler", "cosine",
]  # fmt: skip


def _train(csv: Path, results: Path, name: str, *extra: str) -> int:
    return main(["train", *RECIPE, "--data", str(csv), "--results", str(results), "--name", name, *extra])


def _stop_after_epoch(epoch: int, monkeypatch, signum: int = signal.SIGTERM) -> None:
    """``signum`` (SIGTERM: ``kill``; SIGINT: Ctrl-C) to this process as epoch ``epoch + 1`` starts."""
    step = Trainer.step_epoch

    def stopping(self):
        if self.epoch == epoch:
            signal.raise_signal(signum)
        return step(self)

    monkeypatch.setattr(Trainer, "step_epoch", stopping)


def _numbers(run: Path) -> pd.DataFrame:
    table = pd.read_csv(run / "metrics.csv")
    return table.drop(columns=[c for c in table.columns if c.endswith("_time")])  # the numbers, not the clock


@pytest.fixture(scope="module")
def stopped(chain_csv, tmp_path_factory) -> Path:
    """A train run SIGTERMed after epoch 1 of 3 (kept for the mistake cases to copy)."""
    results = tmp_path_factory.mktemp("stopped")
    with pytest.MonkeyPatch.context() as patch:
        _stop_after_epoch(1, patch)
        assert _train(chain_csv, results, "cut") == 130
    return results / "train" / "cut"


@pytest.mark.slow
def test_sigterm_mid_run_says_how_to_continue_and_resume_reaches_the_uninterrupted_numbers(
    chain_csv, tmp_path, capsys, monkeypatch
):
    assert _train(chain_csv, tmp_path, "whole") == 0
    with monkeypatch.context() as patch:
        _stop_after_epoch(2, patch)
        assert _train(chain_csv, tmp_path, "cut") == 130
    cut = tmp_path / "train" / "cut"
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"interrupted; {cut}/last.pt holds epoch 2: continue the run with `python launch.py train --resume {cut}`"
    ]
    assert len(pd.read_csv(cut / "metrics.csv")) == 2 and load_checkpoint(cut / "last.pt")["epoch"] == 2

    assert main(["train", "--resume", str(cut)]) == 0  # the data file the run recorded
    out = capsys.readouterr().out
    assert "continuing vgg on cpu at epoch 3/3" in out and "epoch   3/3" in out and "epoch   2/3" not in out
    whole = tmp_path / "train" / "whole"
    pd.testing.assert_frame_equal(_numbers(cut), _numbers(whole))
    assert load_checkpoint(cut / "best.pt")["val_acc"] == load_checkpoint(whole / "best.pt")["val_acc"]

    assert main(["train", "--resume", str(cut), "--data", str(chain_csv)]) == 0  # finished: says so, changes nothing
    assert "this run finished epoch 3/3; nothing to continue" in capsys.readouterr().out
    pd.testing.assert_frame_equal(_numbers(cut), _numbers(whole))


def test_ctrl_c_before_the_first_epoch_ends_leaves_no_folder(chain_csv, tmp_path, capsys, monkeypatch):
    def ctrl_c(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "step_epoch", ctrl_c)
    assert _train(chain_csv, tmp_path, "early") == 130
    assert "interrupted; no epoch had finished, so nothing was kept: run the same command again" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "train" / "early").exists()


def _edit_lr(run: Path) -> None:
    text = (run / "config.yaml").read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    config = yaml.safe_load(text)
    (run / "config.yaml").write_text(header + yaml.safe_dump({**config, "lr": 0.5}))


@pytest.mark.parametrize(
    "extra, prepare, message",
    [
        (
            ["--lr", "0.1"],
            None,
            "--resume continues a run with its own config.yaml, so it takes only --data and --device: drop --lr",
        ),
        (["--name", "x", "--smoke"], None, "drop --smoke, --name"),
        ([], lambda run: (run / "last.pt").unlink(), "no last.pt, so no epoch of it finished: start a new run"),
        ([], lambda run: (run / "config.yaml").unlink(), "not the folder of a fer-tune train run"),
        ([], _edit_lr, "config.yaml: lr differ(s) from what its last.pt was trained with"),
        (["--data", "OTHER"], None, "not the data"),
    ],
    ids=["an-option", "two-options", "no-last-pt", "foreign-folder", "edited-config", "other-data"],
)
def test_resume_mistakes_give_one_error_line_and_train_nothing(stopped, extra, prepare, message, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    if prepare is not None:
        prepare(run)
    if extra[-1:] == ["OTHER"]:
        extra = [*extra[:-1], str(write_demo_csv(tmp_path / "other.csv", DemoSpec(10, 5, 5, seed=2)))]
    before = (run / "metrics.csv").read_bytes() if (run / "metrics.csv").exists() else None
    assert main(["train", "--resume", str(run), *extra]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err
    assert "epoch" not in out
    if before is not None:
        assert (run / "metrics.csv").read_bytes() == before


@pytest.mark.slow
def test_a_search_continues_its_half_trained_base_rather_than_taking_it(chain_csv, tmp_path, capsys):
    """Before, a base stopped after epoch 1 had a best.pt, and the next start took it as the finished base."""
    space = load_search_space("vgg_spinal").for_smoke()
    opts = SearchOptions(results_dir=tmp_path / "results", smoke=True)
    folder = tmp_path / "results" / "vgg_spinal-smoke"
    folder.mkdir(parents=True)
    data = load_fer(chain_csv)
    with pytest.MonkeyPatch.context() as patch:
        _stop_after_epoch(1, patch, signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            resolve_base(space, data, opts, folder)
    assert len(pd.read_csv(folder / "base" / "metrics.csv")) == 1
    base = resolve_base(space, data, opts, folder)
    epochs = yaml.safe_load((folder / "base" / "config.yaml").read_text())["epochs"]
    assert len(pd.read_csv(folder / "base" / "metrics.csv")) == epochs > 1
    assert f"continuing vgg on cpu at epoch 2/{epochs}" in capsys.readouterr().out
    assert base.source == str(folder / "base" / "best.pt")
