"""Round 2 of bad input and adversarial use: nothing outside a run's own folder is touched, every
number is checked before anything starts, inputs that are not what they seem are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fer_tune.cli import main
from fer_tune.data.demo import DemoSpec, write_demo_csv
from fer_tune.manifest import SearchManifest
from fer_tune.run_folder import clear_search_outputs
from fer_tune.training.checkpoint import save_checkpoint
from fer_tune.training.config import TrainConfig

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def _refused(argv: list[str], capsys, expect: str, results: Path) -> str:
    """Run the command; it must exit 2 with one ``error:`` line containing ``expect`` and write nothing."""
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (argv, captured.out[-500:], err)
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and expect in err, (expect, err)
    assert not results.exists() or not any(results.rglob("*")), sorted(results.rglob("*"))
    return err


# ------------------------------------------------------------ 1. never outside the run's own folder


BAD_NAMES = ["..", "../sibling", "a/b", "/tmp/elsewhere", ".", ".hidden", "x" * 101, "with space"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("command", ["search", "retrain", "train"])
def test_a_run_name_is_one_plain_folder_name(tiny_csv, tmp_path, capsys, name, command):
    results = tmp_path / "results"
    argv = {
        "search": ["--search", "vgg", "--smoke", "--name", name],
        "retrain": ["--retrain", name, "--smoke"],
        "train": ["train", "--smoke", "--name", name],
    }[command]
    _refused(argv + ["--data", str(tiny_csv), "--results", str(results)], capsys, "one plain folder name", results)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_fresh_refuses_a_folder_fer_tune_did_not_make(tiny_csv, tmp_path, capsys):
    folder = tmp_path / "results" / "mine"
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    rc = main(
        [
            "--search",
            "vgg",
            "--smoke",
            "--name",
            "mine",
            "--fresh",
            "--data",
            str(tiny_csv),
            "--results",
            str(tmp_path / "results"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "not made by a fer-tune search" in err and err.count("\n") == 1
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_fresh_deletes_only_what_fer_tune_wrote(tmp_path):
    folder = tmp_path / "vgg"
    (folder / "ray" / "trial_001").mkdir(parents=True)
    SearchManifest(
        name="vgg", space="vgg", model="vgg", base=None, metric="val_acc", mode="max", smoke=False, seed=0, budget={}
    ).write(folder)
    for name in ("trials.csv", "report.md", "best_model.pt", "optuna.db", "analysis.md", "notes.txt"):
        (folder / name).write_text("x")
    (folder / "my-analysis").mkdir()
    (folder / "my-analysis" / "plot.png").write_text("mine")
    kept = clear_search_outputs(folder)
    assert kept == ["my-analysis", "notes.txt"]
    assert sorted(p.name for p in folder.iterdir()) == ["my-analysis", "notes.txt"]
    assert (folder / "my-analysis" / "plot.png").read_text() == "mine"


def test_a_search_that_fails_before_its_first_epoch_leaves_no_folder(tiny_csv, tmp_path, capsys):
    empty_base = save_checkpoint(
        tmp_path / "base.pt",
        {"config": TrainConfig(model="vgg").to_dict(), "model": {"unrelated.weight": torch.zeros(1)}},
    )
    results = tmp_path / "results"
    rc = main(
        [
            "--search",
            "vgg_spinal",
            "--smoke",
            "--no-retrain",
            "--base-checkpoint",
            str(empty_base),
            "--data",
            str(tiny_csv),
            "--results",
            str(results),
        ]
    )
    assert rc == 2 and "no tensor of the base checkpoint matches" in capsys.readouterr().err
    assert not (results / "vgg_spinal-smoke").exists()


def test_a_training_run_that_fails_before_its_first_epoch_leaves_no_folder(tiny_csv, tmp_path, capsys):
    results = tmp_path / "results"
    rc = main(
        [
            "train",
            "--smoke",
            "--model",
            "vit_l32",
            "--pretrained",
            str(tmp_path / "no-such-vit"),
            "--name",
            "vit",
            "--data",
            str(tiny_csv),
            "--results",
            str(results),
        ]
    )
    assert rc == 2 and "no pretrained ViT here" in capsys.readouterr().err
    assert not (results / "train" / "vit").exists()


# ------------------------------------------------------------ 2. every number checked before anything starts


SEARCH_OPTIONS = [
    ("--trials", "0"),
    ("--trials", "-1"),
    ("--trials", "x"),
    ("--trials", "1.5"),
    ("--max-epochs", "0"),
    ("--gpus-per-trial", "-1"),
    ("--gpus-per-trial", "nan"),
    ("--gpus-per-trial", "1.5"),
    ("--cpus-per-trial", "0"),
    ("--cpus-per-trial", "inf"),
    ("--seed", "-1"),
    ("--seed", str(2**32)),
    ("--top-k", "0"),
    ("--seeds", "0"),
    ("--seeds", "-3"),
]


@pytest.mark.parametrize("option,value", SEARCH_OPTIONS)
def test_every_search_option_is_checked(tiny_csv, tmp_path, capsys, option, value):
    results = tmp_path / "results"
    _refused(
        ["--search", "vgg", "--smoke", option, value, "--data", str(tiny_csv), "--results", str(results)],
        capsys,
        option,
        results,
    )


TRAIN_OPTIONS = [
    ("--lr", "0"),
    ("--lr", "-1"),
    ("--lr", "nan"),
    ("--lr", "inf"),
    ("--momentum", "1.5"),
    ("--momentum", "-0.1"),
    ("--weight-decay", "-1"),
    ("--weight-decay", "nan"),
    ("--batch-size", "0"),
    ("--width", "0"),
    ("--width", "inf"),
    ("--epochs", "0"),
    ("--seed", "-1"),
    ("--epochs", "two"),
]


@pytest.mark.parametrize("option,value", TRAIN_OPTIONS)
def test_every_train_option_is_checked(tiny_csv, tmp_path, capsys, option, value):
    results = tmp_path / "results"
    name = option.lstrip("-").replace("-", "_")
    _refused(
        ["train", "--smoke", option, value, "--data", str(tiny_csv), "--results", str(results)],
        capsys,
        name if value != "two" else "--epochs",
        results,
    )


YAML_CASES = [
    ("budget: {max_epochs: 4, num_trials: 0}", "budget.num_trials = 0"),
    ("budget: {max_epochs: 4, num_trials: -1}", "num_trials"),
    ("budget: {max_epochs: 4, grace_period: 5}", "budget.grace_period = 5"),
    ("budget: {max_epochs: 4, reduction_factor: 1}", "budget.reduction_factor = 1"),
    ("budget: {max_epochs: 4, max_concurrent: 0}", "budget.max_concurrent = 0"),
    ("budget: {max_epochs: .inf}", "budget.max_epochs"),
    ("budget: {max_epochs: 2.5}", "budget.max_epochs"),
    ("resources: {gpus_per_trial: -1}", "gpus_per_trial"),
    ("resources: {gpus_per_trial: .nan}", "gpus_per_trial"),
    ("resources: {gpus_per_trial: 1.5}", "resources.gpus_per_trial = 1.5"),
    ("resources: {cpus_per_trial: 0}", "resources.cpus_per_trial = 0"),
    ("fixed: {lr: .inf}", "lr = inf"),
    ("fixed: {momentum: 2}", "momentum = 2.0"),
    ("fixed: {batch_size: 0}", "batch_size = 0"),
    ("fixed: {width: -1}", "width = -1.0"),
    ("space: {lr: {loguniform: [0, 1.0e-3]}}", "low must be above 0"),
    ("space: {lr: {loguniform: [1.0e-5, .inf]}}", "finite numbers"),
    ("space: {batch_size: {int: [16.5, 64]}}", "whole numbers"),
    ("space: {lr: {uniform: [-1, 1]}}", "lr = -1.0"),
    ("smoke: {budget: {grace_period: 9}}", "smoke.budget.grace_period = 9"),
    ("smoke: {budget: {num_trials: 0}}", "smoke.budget.num_trials = 0"),
    ("model: vgg\nmodel: vit_l32", "key 'model' appears twice (lines 1 and 2)"),
]


@pytest.mark.parametrize("body,expect", YAML_CASES)
def test_every_number_of_a_search_space_is_checked(tiny_csv, tmp_path, capsys, body, expect):
    base = {
        "model": "model: vgg",
        "budget": "budget: {max_epochs: 4, grace_period: 1}",
        "smoke": "smoke: {budget: {max_epochs: 4}}",
    }
    for key in list(base):
        if body.startswith(f"{key}:"):
            base.pop(key)
    path = tmp_path / "space.yaml"
    path.write_text(
        body + "\n" + "\n".join(base.values()) + "\nspace: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"
        if not body.startswith("space:")
        else body + "\n" + "\n".join(base.values()) + "\n"
    )
    results = tmp_path / "results"
    _refused(
        ["--search", str(path), "--smoke", "--data", str(tiny_csv), "--results", str(results)], capsys, expect, results
    )


# ------------------------------------------------------------ 3. inputs that are not what they seem


def test_csv_with_a_duplicated_column_is_refused(tmp_path, capsys):
    csv = write_demo_csv(tmp_path / "fer2013.csv", DemoSpec(3, 1, 1))
    lines = csv.read_text().splitlines()
    lines[0] = "emotion,pixels,emotion"
    csv.write_text("\n".join(lines) + "\n")
    _refused(
        ["--search", "vgg", "--smoke", "--data", str(csv), "--results", str(tmp_path / "r")],
        capsys,
        "column 'emotion' appears more than once",
        tmp_path / "r",
    )


def test_a_training_split_left_empty_is_refused_before_training(tmp_path, capsys):
    rows = ["emotion,pixels"] + [f"{k}," + " ".join(["7"] * 2304) for k in range(7)]  # one row per class
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    _refused(
        ["train", "--smoke", "--data", str(tmp_path / "train.csv"), "--results", str(tmp_path / "r")],
        capsys,
        "the train split (Training) has no rows",
        tmp_path / "r",
    )


@pytest.mark.parametrize(
    "device,expect", [("cuda", "CUDA device(s)"), ("tpu9", "not a device name"), ("mps", "cpu or cuda")]
)
def test_a_device_that_is_not_there(tiny_csv, tmp_path, capsys, device, expect):
    _refused(
        ["train", "--smoke", "--device", device, "--data", str(tiny_csv), "--results", str(tmp_path / "r")],
        capsys,
        expect,
        tmp_path / "r",
    )


def test_image_folder_reports_entries_it_does_not_read(tmp_path):
    from PIL import Image

    from fer_tune.data.fer2013 import load_fer

    for split in ("train", "test"):
        for k, emotion in enumerate(("angry", "happy")):
            folder = tmp_path / "faces" / split / emotion
            folder.mkdir(parents=True)
            for i in range(12):
                Image.fromarray(np.full((48, 48), 10 * i + k, dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "faces" / "train" / "happy" / "nested").mkdir()
    (tmp_path / "faces" / "train" / "happy" / "notes.txt").write_text("x")
    (tmp_path / "faces" / "train" / "loose.png").write_text("x")
    data = load_fer(tmp_path / "faces", use_cache=False)
    note = [n for n in data.notes if n.startswith("not read")]
    assert note and "3 entries" in note[0] and "train/loose.png" in note[0]


def test_evaluate_out_naming_a_file_is_refused(tmp_path, tiny_csv, capsys):
    target = tmp_path / "confusion.png"
    target.write_text("mine")
    _refused(
        ["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--data", str(tiny_csv), "--out", str(target)],
        capsys,
        "is a file",
        tmp_path / "nothing",
    )
    assert target.read_text() == "mine"


@pytest.mark.parametrize(
    "content,expect",
    [
        ("", "not a readable winners table"),
        ("winner,accuracy_mean\n", "column 'accuracy_std' is missing"),
        ('"unclosed\n1,2\n', "not a readable winners table"),
    ],
)
def test_report_meets_an_empty_or_corrupt_winners_table(tmp_path, capsys, content, expect):
    (tmp_path / "vgg").mkdir()
    (tmp_path / "vgg" / "winners.csv").write_text(content)
    rc = main(["--report", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "winners.csv" in err and expect in err, err
    assert not (tmp_path / "leaderboard.md").exists()


def test_result_files_are_written_atomically(tmp_path, monkeypatch):
    """A crash in the middle of writing scores.csv leaves the old file whole, and no temporary file."""
    from fer_tune.reporting.scoring import ScoredRuns, write_scores

    (tmp_path / "scores.csv").write_text("old")
    (tmp_path / "predictions.csv").write_text("old")

    def crash_midway(self, path, *args, **kwargs):
        Path(path).write_text("half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash_midway)
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(OSError):
        write_scores(ScoredRuns(frame, frame, frame, "PrivateTest", 0, {}), tmp_path)
    assert (tmp_path / "scores.csv").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "scores.csv"]


def test_retrain_refuses_a_folder_fer_tune_did_not_make(tiny_csv, tmp_path, capsys):
    folder = tmp_path / "results" / "old"
    (folder / "winners").mkdir(parents=True)
    (folder / "winners" / "mine.pt").write_text("mine")
    (folder / "trials.csv").write_text("trial\n1\n")
    rc = main(["--retrain", "old", "--data", str(tiny_csv), "--results", str(tmp_path / "results")])
    captured = capsys.readouterr()
    assert rc == 2 and "not a folder fer-tune's search made" in captured.err and "data:" not in captured.out
    assert (folder / "winners" / "mine.pt").read_text() == "mine"


def test_analyze_refuses_folders_it_cannot_read_in_one_line(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    assert main(["--analyze", "mine", "--results", str(tmp_path)]) == 2
    assert "so the analysis will not write (or delete) there" in capsys.readouterr().err
    old = tmp_path / "old"
    SearchManifest(
        name="old", space="vgg", model="vgg", base=None, metric="val_acc", mode="max", smoke=False, seed=0, budget={}
    ).write(old)
    assert main(["--analyze", "old", "--results", str(tmp_path)]) == 2
    assert "no optuna.db (the search ran with an older fer-tune" in capsys.readouterr().err
    assert sorted(p.name for p in old.iterdir()) == ["manifest.yaml"]  # nothing written
