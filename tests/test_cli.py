"""The command line: train / evaluate / data / --list, and one clear error line for user mistakes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fer_tune.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_writes_config_metrics_and_checkpoints(tiny_csv, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--model",
            "vgg",
            "--width",
            "0.125",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--data",
            str(tiny_csv),
            "--results",
            str(tmp_path),
            "--name",
            "run",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch   1/2" in out and "epoch   2/2" in out
    run = tmp_path / "train" / "run"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert yaml.safe_load((run / "config.yaml").read_text())["width"] == 0.125
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()

    rc = main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tiny_csv)])
    out = capsys.readouterr().out
    assert rc == 0 and "PrivateTest (70 images) ten-crop: accuracy" in out
    assert (run / "confusion_PrivateTest.png").stat().st_size > 1000


@pytest.mark.slow
def test_transfer_train_reports_what_was_loaded(tiny_csv, tmp_path, capsys):
    main(
        [
            "train",
            "--model",
            "vgg",
            "--width",
            "0.125",
            "--epochs",
            "1",
            "--data",
            str(tiny_csv),
            "--results",
            str(tmp_path),
            "--name",
            "base",
        ]
    )
    rc = main(
        [
            "train",
            "--model",
            "vgg_spinal",
            "--width",
            "0.125",
            "--epochs",
            "1",
            "--data",
            str(tiny_csv),
            "--results",
            str(tmp_path),
            "--name",
            "spinal",
            "--freeze",
            "--optimizer",
            "ranger21",
            "--base-checkpoint",
            str(tmp_path / "train" / "base" / "best.pt"),
        ]
    )
    assert rc == 0
    assert "transfer: loaded" in capsys.readouterr().out


@pytest.mark.slow
def test_config_round_trip_and_smoke(tiny_csv, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: vgg_spinal\noptimizer: ranger21\nscheduler: none\nlr: 1e-3\nfreeze: true\n")
    rc = main(
        [
            "train",
            "--config",
            str(config),
            "--smoke",
            "--data",
            str(tiny_csv),
            "--results",
            str(tmp_path),
            "--name",
            "s",
        ]
    )
    assert rc == 0
    saved = yaml.safe_load((tmp_path / "train" / "s" / "config.yaml").read_text())
    assert saved["model"] == "vgg_spinal" and saved["lr"] == 1e-3 and saved["epochs"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--smoke", "--model", "resnet"], "model = 'resnet' is not allowed"),
        (["train", "--data", "/nowhere/fer2013.csv"], "/nowhere/fer2013.csv: no such file"),
        (["train", "--smoke", "--optimizer", "lion"], "optimizer = 'lion' is not allowed"),
        (["train", "--smoke", "--optimizer", "ranger21", "--scheduler", "cosine"], "set scheduler: none"),
        (["--search", "resnet_spinal"], "unknown search 'resnet_spinal'; available: effnetv2s"),
        (["evaluate", "--checkpoint", "/nowhere.pt", "--data", "{csv}"], "/nowhere.pt: checkpoint not found"),
        (["train", "--config", "{bad_yaml}"], "bad.yaml line \\d+ column \\d+: YAML syntax error"),
        (["train", "--config", "{unknown_key}"], "unknown key\\(s\\) learning_rate"),
    ],
)
def test_user_mistakes_give_one_error_line(args, message, tiny_csv, tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: vgg\nlr: [1, 2\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model: vgg\nlearning_rate: 0.1\n")
    args = [a.format(csv=tiny_csv, bad_yaml=bad_yaml, unknown_key=unknown) for a in args]
    assert main(args + ["--results", str(tmp_path)] if args[0] == "train" else args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_launch_py_exits_non_zero_without_traceback(tmp_path):
    bad = tmp_path / "fer2013.csv"
    bad.write_text("emotion,pixels,Usage\n9,1 2 3,Training\n")
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "data", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {bad} line 2")


def test_list_and_help(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "vgg",
        "vgg_spinal",
        "vgg_progressive_spinal",
        "effnetv2s",
        "effnetv2s_spinal",
        "vit_l32",
        "vit_l32_spinal",
    ):
        assert name in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--gpus-per-trial" in capsys.readouterr().out


@pytest.mark.parametrize(
    "option,field,section,bad",
    [
        ("--trials", "num_trials", "budget", "0"),
        ("--max-epochs", "max_epochs", "budget", "0"),
        ("--cpus-per-trial", "cpus_per_trial", "resources", "0"),
        ("--gpus-per-trial", "gpus_per_trial", "resources", "1.5"),
    ],
)
def test_an_option_and_its_yaml_setting_share_one_rule(tmp_path, capsys, option, field, section, bad):
    """`--trials 0` and `budget: {num_trials: 0}` are refused with the same words (one rule, in
    search_space.RANGES), before anything starts."""
    assert main(["--search", "vgg", "--smoke", option, bad, "--results", str(tmp_path)]) == 2
    from_option = capsys.readouterr().err.strip().split("; use ", 1)[1]
    import yaml

    values = yaml.safe_load((Path(__file__).resolve().parent.parent / "search_spaces" / "vgg.yaml").read_text())
    values[section][field] = yaml.safe_load(bad)
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump(values))
    assert main(["--search", str(space), "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{section}.{field} = " in err and err.split("; use ", 1)[1] == from_option
