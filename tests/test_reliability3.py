"""Reliability round 3 (issue 24), one table per class of bad input (the classes are the issue's
numbers): every refusal is one error line before anything starts or is written."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from fer_tune.cli import main
from fer_tune.manifest import SearchManifest
from fer_tune.training.config import TrainConfig

# (model, space line, what the one error line says)
MEANINGLESS = [
    ("vgg", "batch_size: {uniform: [16, 64]}", "batch_size is a whole number and uniform draws fractions"),
    ("vgg", "plateau_patience: {loguniform: [1, 8]}", "use {int: [1, 8]} or {choice: [...]}"),
    ("vgg", "optimizer: {uniform: [0, 1]}", "optimizer takes named values; sample it with {choice: [...]}"),
    ("vgg_spinal", "freeze: {uniform: [0, 1]}", "freeze takes named values"),
    ("vgg", "activation: {choice: [swish, mish]}", "model vgg has no activation option"),
    ("effnetv2s", "width: {choice: [0.5, 1.0]}", "model effnetv2s has no width option"),
    ("vgg", "freeze: {choice: [true, false]}", "model vgg trains from scratch (no base to freeze)"),
    ("vgg", "seed: {int: [0, 9]}", "space.seed is not sampled: the search's --seed sets every trial's seed"),
    ("vgg", "amp: {choice: [true, false]}", "space.amp is not sampled"),
    ("vgg", "eval_batch_size: {choice: [64, 256]}", "space.eval_batch_size is not sampled"),
]


@pytest.mark.parametrize("model,line,expect", MEANINGLESS)
def test_a_sampled_setting_that_means_nothing_is_refused(tiny_csv, tmp_path, capsys, model, line, expect):
    space = tmp_path / "space.yaml"
    space.write_text(f"model: {model}\nbudget: {{max_epochs: 2, grace_period: 1}}\nspace:\n  {line}\n")
    results = tmp_path / "results"
    rc = main(["--search", str(space), "--data", str(tiny_csv), "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {space}: space.") and len(err.splitlines()) == 1, err
    assert expect in err and "Traceback" not in err, err
    assert not results.exists()


def test_every_shipped_space_samples_only_what_its_model_uses():
    from fer_tune.search.space_file import available_spaces, load_search_space

    assert all(load_search_space(name).params for name in available_spaces())


# (arguments of demo-data, what the one error line says); class 3 (a user's file is never replaced) and 6
DEMO_CASES = [
    (["--per-class", "0"], "--per-class 0 is not allowed; use a whole number 1 to 10000"),
    (["--seed", "-1"], "--seed -1 is not allowed; use 0 to 2**32 - 1"),
]


@pytest.mark.parametrize("extra,expect", DEMO_CASES)
def test_demo_data_refuses_meaningless_counts(tmp_path, capsys, extra, expect):
    assert main(["demo-data", str(tmp_path / "d.csv"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {expect}" and not (tmp_path / "d.csv").exists()


def test_demo_data_never_replaces_a_file_and_checks_its_folder_first(tmp_path, capsys):
    mine = tmp_path / "model.yaml"
    mine.write_text("mine")
    assert main(["demo-data", str(mine)]) == 2
    assert "already exists; demo-data writes only a new file" in capsys.readouterr().err
    assert mine.read_text() == "mine"
    assert main(["demo-data", str(mine / "d.csv"), "--per-class", "1"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path / "new" / "d.csv"), "--per-class", "1"]) == 0


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)  # 9**9 values once expanded

# (YAML text, what the one error line says): classes 5 (hostile input), 6 (no traceback) and 8 (the real cause)
YAML_TEXTS = [
    (BOMB, "aliases expand to more than 100000 values"),
    ("model: vgg\n[1, 2]: x\n", "line 2: a key must be a plain name or number, not a list"),
    ("model: vgg\nx: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
]

# (search-space text, what the one error line says): a value of the wrong kind names the real cause
SPACE_TEXTS = [
    ("model: [vgg, vit_l32]\n", "model = ['vgg', 'vit_l32'] is unknown; allowed: vgg"),
    ("model: vgg\nmetric: [val_acc]\n", "metric = ['val_acc'] is unknown; allowed: val_acc"),
    (  # class 8: the real cause, not "scheduler = 'none' is not one of ..."
        "model: vgg\npaper_trial: {optimizer: ranger21, scheduler: cosine}\n",
        "paper_trial has optimizer ranger21 with scheduler cosine, but ranger21 runs its own learning-rate schedule",
    ),
    ("model: vgg\nfixed: {optimizer: ranger21, scheduler: step}\n", "fixed has optimizer ranger21 with scheduler step"),
]


@pytest.mark.parametrize("text,expect", SPACE_TEXTS)
def test_a_search_space_value_of_the_wrong_kind_is_named(tiny_csv, tmp_path, capsys, text, expect):
    space = tmp_path / "space.yaml"
    space.write_text(text + "space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n")
    assert main(["--search", str(space), "--data", str(tiny_csv), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {space}: ") and expect in err and len(err.splitlines()) == 1, err


def test_a_space_file_whose_name_is_no_run_name_is_blamed_not_an_unset_name(tiny_csv, tmp_path, capsys):
    space = tmp_path / "with space" / "my space.yaml"
    space.parent.mkdir()
    space.write_text("model: vgg\nspace: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n")
    assert main(["--search", str(space), "--data", str(tiny_csv), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {space}: the run name this file's name gives, 'my space'"), err
    assert "--name 'my space'" not in err and err.endswith("give --name NAME, or rename the file")


@pytest.mark.parametrize("text,expect", YAML_TEXTS, ids=["alias bomb", "unhashable key", "deep nesting"])
def test_hostile_yaml_is_one_error_line_quickly(tmp_path, text, expect):
    import time

    from fer_tune.errors import UserError
    from fer_tune.yaml_files import read_yaml

    path = tmp_path / "s.yaml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(UserError, match=expect):
        read_yaml(path)
    assert time.monotonic() - started < 5


def test_a_merge_key_works_as_yaml_defines_it(tmp_path):
    from fer_tune.yaml_files import read_yaml

    path = tmp_path / "s.yaml"
    path.write_text("defaults: &d {lr: 0.1, batch_size: 32}\nfixed:\n  <<: *d\n  lr: 0.01\n")
    assert read_yaml(path)["fixed"] == {"lr": 0.01, "batch_size": 32}


def test_nan_weights_are_refused_everywhere_a_checkpoint_is_read(tmp_path, tiny_csv, capsys):
    """Class 7: a diverged run's weights evaluated to 14.29% and predicted "angry" with empty probabilities;
    now evaluate, export and a transfer refuse them in one line, and a checkpoint whose model is not a set
    of tensors is refused too."""
    import torch

    from fer_tune.models import create_model
    from fer_tune.training.checkpoint import model_payload, save_checkpoint

    config = TrainConfig(model="vgg", width=0.0625)
    state = create_model("vgg", width=0.0625).state_dict()
    state[next(iter(state))] = torch.full_like(state[next(iter(state))], float("nan"))
    nan = save_checkpoint(tmp_path / "nan.pt", model_payload(config.to_dict(), state, 1, 0.14))
    for argv in (
        ["evaluate", "--checkpoint", str(nan), "--data", str(tiny_csv)],
        ["export", "--checkpoint", str(nan), "--out", str(tmp_path / "x.onnx")],
        ["train", "--model", "vgg_spinal", "--base-checkpoint", str(nan), "--data", str(tiny_csv), "--smoke"],
    ):
        assert main(argv + ["--results", str(tmp_path / "r")] if argv[0] == "train" else argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "hold NaN or infinite values" in err and len(err.splitlines()) == 1, err
    tensor = save_checkpoint(tmp_path / "tensor.pt", {**model_payload({}, {}, 1, 0.1), "model": torch.zeros(3)})
    assert main(["evaluate", "--checkpoint", str(tensor), "--data", str(tiny_csv)]) == 2
    assert "is not a set of named weight tensors" in capsys.readouterr().err


def test_a_training_run_that_kept_no_model_exits_non_zero(tmp_path, tiny_csv, capsys):
    argv = ["train", "--smoke", "--lr", "1e6", "--optimizer", "sgd_nesterov", "--data", str(tiny_csv)]
    assert main(argv + ["--results", str(tmp_path / "r"), "--name", "hot"]) == 2
    assert "diverged at epoch 1 before any epoch scored, so no model was kept" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["truncated xz", "truncated gz", "plain text named .xz"])
def test_a_compressed_file_that_is_not_is_one_error_line(tmp_path, tiny_csv, capsys, kind):
    """Class 6: a truncated .xz / .gz or plain text named .csv.xz was an EOFError / LZMAError traceback."""
    import gzip
    import lzma

    text = tiny_csv.read_bytes()[:50_000]
    path, content = {
        "truncated xz": (tmp_path / "f.csv.xz", lambda: lzma.compress(text)[:400]),
        "truncated gz": (tmp_path / "f.csv.gz", lambda: gzip.compress(text)[:400]),
        "plain text named .xz": (tmp_path / "f.csv.xz", lambda: text),
    }[kind]
    content = content()
    path.write_bytes(content)
    assert main(["data", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: cannot be decompressed") and "Traceback" not in err, err


# ------------------------------------------------------------ class 2: the manifest is the contract

CONTINUE_SPACE = (
    "model: vgg\nbudget: {max_epochs: 2, grace_period: 1, num_trials: 2}\n"
    "space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
)


def _made_search(tmp_path, tiny_csv):
    """A search folder whose manifest records what a search of CONTINUE_SPACE on ``tiny_csv`` records (its
    space digest and data md5, by the functions the search uses); no trial is run."""
    from fer_tune.data.fer2013 import load_fer
    from fer_tune.search.continuation import data_md5 as md5_of
    from fer_tune.search.continuation import space_hash
    from fer_tune.search.run import SearchOptions, configured_space

    space_file = tmp_path / "cont.yaml"
    space_file.write_text(CONTINUE_SPACE)
    space = configured_space(str(space_file), SearchOptions(results_dir=tmp_path / "r"))
    folder = tmp_path / "r" / "cont"
    folder.mkdir(parents=True)
    SearchManifest(
        name="cont",
        space=str(space_file),
        model="vgg",
        base=None,
        metric="val_acc",
        mode="max",
        smoke=False,
        seed=0,
        budget=asdict(space.budget),
        data=str(tiny_csv),
        space_hash=space_hash(space),
        data_md5=md5_of(load_fer(tiny_csv)),
    ).write(folder)
    return space_file, folder


CONTINUATIONS = [
    ("another --trials", lambda space, data, other: ["--search", str(space), "--trials", "5"], "--trials 2, not 5"),
    ("another space", None, "other space settings than"),
    ("other data", lambda space, data, other: ["--search", str(space), "--data", str(other)], "data of md5"),
    ("a renamed copy", "rename", "holds search 'cont'"),
    ("--retrain on other data", lambda space, data, other: ["--retrain", "cont", "--data", str(other)], "data of md5"),
]


@pytest.mark.parametrize("case,argv,expect", CONTINUATIONS, ids=[c[0] for c in CONTINUATIONS])
def test_a_continuation_must_agree_with_the_manifest(tmp_path, tiny_csv, capsys, case, argv, expect):
    """Issue 24, class 2: another space, --trials, data or folder name is one error line naming both
    values, before anything is written (the manifest stays as it was)."""
    from fer_tune.data.demo import DemoSpec, write_demo_csv

    space, folder = _made_search(tmp_path, tiny_csv)
    other = write_demo_csv(tmp_path / "other.csv", DemoSpec(train_per_class=3, val_per_class=2, test_per_class=2))
    before = (folder / "manifest.yaml").read_text()
    if argv is None:  # the space file edited after the search started
        space.write_text(CONTINUE_SPACE.replace("1.0e-2", "5.0e-2"))
        argv = lambda space, data, other: ["--search", str(space)]  # noqa: E731
    if argv == "rename":
        folder.rename(folder.with_name("copy"))
        folder = folder.with_name("copy")
        before = (folder / "manifest.yaml").read_text()
        argv = lambda space, data, other: ["--search", str(space), "--name", "copy"]  # noqa: E731
    args = argv(space, tiny_csv, other)
    if "--data" not in args:
        args += ["--data", str(tiny_csv)]
    assert main([*args, "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expect in err and len(err.splitlines()) == 1, err
    assert (folder / "manifest.yaml").read_text() == before


# ------------------------------------------------------------ classes 3 and 4: outputs checked before the work


def _outputs(tmp_path, tiny_csv, checkpoint):
    """(argv, what the error says) for every command's output path below a file, onto a FIFO, or whose
    export card would replace a user's file."""
    import os

    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    (tmp_path / "model.yaml").write_text("my notes")
    faces = tmp_path / "faces"
    faces.mkdir(exist_ok=True)
    return [
        (["predict", "--checkpoint", str(checkpoint), str(faces), "--out", str(a_file / "p.csv")], "is a file"),
        (["predict", "--checkpoint", str(checkpoint), str(faces), "--out", str(fifo)], "is a special file"),
        (
            ["predict", "--checkpoint", str(checkpoint), str(faces), "--annotate", str(a_file / "ann")],
            "is a file, not a folder",
        ),
        (
            ["evaluate", "--checkpoint", str(checkpoint), "--data", str(tiny_csv), "--out", str(a_file / "o")],
            "is a file",
        ),
        (["export", "--checkpoint", str(checkpoint), "--out", str(a_file / "m.onnx")], "is a file, not a folder"),
        (["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "model")], "would replace a file"),
    ]


def test_every_output_path_is_checked_before_any_input_is_read(tmp_path, tiny_csv, capsys, monkeypatch):
    """Class 4: an output below an existing file, or a FIFO, was found only after all the work (a
    FileExistsError / NotADirectoryError, or a hang); class 3: export --out model wrote model.yaml over a
    user's file. Each is one error line now, before the checkpoint or the data is read."""
    from fer_tune.training import checkpoint as checkpoint_module

    checkpoint = tmp_path / "never_read.pt"
    checkpoint.write_bytes(b"not read")
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda *a, **k: pytest.fail("input read first"))
    for argv, expect in _outputs(tmp_path, tiny_csv, checkpoint):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expect in err and len(err.splitlines()) == 1, (argv, err)
    assert (tmp_path / "model.yaml").read_text() == "my notes" and (tmp_path / "a_file").read_text() == "mine"


def test_a_fifo_or_device_as_input_is_refused_without_reading_it(tmp_path, capsys):
    """Class 5: a FIFO as --data or as a video to predict hung; now one error line, nothing opened."""
    import os

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    assert main(["data", str(fifo)]) == 2
    assert "is a special file (a FIFO or device), not a data file" in capsys.readouterr().err
    assert main(["train", "--smoke", "--data", "/dev/zero", "--results", str(tmp_path / "r")]) == 2
    assert "/dev/zero: is a special file" in capsys.readouterr().err
    checkpoint = tmp_path / "c.pt"
    checkpoint.write_bytes(b"x")
    assert main(["predict", "--checkpoint", str(checkpoint), str(fifo), "--out", str(tmp_path / "p.csv")]) == 2
    assert "is a special file (a FIFO or device); give images" in capsys.readouterr().err


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` gray pixels and holds none: decoding it is the mistake."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "width,height,in_folder,in_predict",
    [
        (15000, 15000, "image is larger than Pillow decodes, expected 48x48", "image is larger than Pillow reads"),
        (12000, 10000, "image is 12000x10000, expected 48x48", "image is 12000x10000 (120 megapixels), more than"),
    ],
)
def test_an_image_too_large_to_decode_is_named_from_its_header(tmp_path, capsys, width, height, in_folder, in_predict):
    """Class 5: a 15000x15000 PNG in an image-folder layout was a DecompressionBombError traceback (and
    one just under Pillow's limit a warning, then a decode). Its header says its size: nothing is decoded."""
    import warnings

    from PIL import Image

    from fer_tune.deploy.faces import frames_of

    faces = tmp_path / "faces" / "train" / "happy"
    faces.mkdir(parents=True)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(faces / "0.png")
    (faces / "1.png").write_bytes(_png_header(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["data", str(tmp_path / "faces")]) == 2
        (frame,) = frames_of(faces / "1.png")
    err = capsys.readouterr().err.strip()
    assert err == f"error: {faces / '1.png'}: {in_folder}", err
    assert frame.gray is None and frame.error.startswith(in_predict), frame


@pytest.mark.parametrize("command", ["--retrain", "--analyze"])
def test_retrain_and_analyze_take_the_search_folders_lock(tmp_path, tiny_csv, capsys, command):
    """Class 2: --retrain and --analyze beside a running search (or each other) are refused with its pid."""
    import os

    import optuna

    from fer_tune.run_folder import folder_lock
    from fer_tune.search_folder import SearchFolder

    _, folder = _made_search(tmp_path, tiny_csv)
    optuna.create_study(study_name="cont", storage=SearchFolder(folder).study_storage())  # --analyze reads it
    with folder_lock(folder, "search"):
        assert main([command, "cont", "--data", str(tiny_csv), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"another search with this name is running (pid {os.getpid()})" in err, err


def test_thin_splits_are_warned_about_naming_the_counts(tmp_path, capsys):
    """Class 7: a training split of one class, or a validation split smaller than a batch, trained to
    "best val accuracy 1.0000" without a word; the training now says what is missing."""
    from fer_tune.data.demo import DemoSpec, write_demo_csv

    csv = write_demo_csv(tmp_path / "d.csv", DemoSpec(train_per_class=2, val_per_class=1, test_per_class=1))
    lines = csv.read_text().splitlines()
    one_class = [lines[0]] + [row for row in lines[1:] if not row.endswith(",Training") or row.startswith("3,")]
    (tmp_path / "thin.csv").write_text("\n".join(one_class) + "\n")
    argv = ["train", "--smoke", "--epochs", "1", "--data", str(tmp_path / "thin.csv"), "--results", str(tmp_path / "r")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "warning: train split Training has no angry, disgust, fear, sad, surprise, neutral images (2 images" in out
    assert "warning: val split PublicTest has 7 images, fewer than one batch of" in out


TRAIN_MEANINGLESS = [
    (["--model", "vgg", "--activation", "mish"], "--activation mish: model vgg has no activation option"),
    (["--model", "effnetv2s", "--width", "0.5"], "--width 0.5: model effnetv2s has no width option"),
    (["--model", "vgg", "--freeze"], "--freeze: nothing to freeze without --base-checkpoint"),
]


@pytest.mark.parametrize("extra,expect", TRAIN_MEANINGLESS)
def test_train_refuses_options_its_model_ignores(tmp_path, tiny_csv, capsys, extra, expect):
    """Class 7: `train --activation mish --freeze` for VGGNet was accepted and recorded as if it mattered."""
    argv = ["train", "--smoke", *extra, "--data", str(tiny_csv), "--results", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {expect}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_train_writes_only_into_a_new_folder_or_over_its_own_run(tmp_path, chain_csv, capsys, monkeypatch):
    """Class 3: `train --name` into an existing folder replaced its best.pt and a user's metrics.csv. Now a
    folder fer-tune's train did not make is refused before the data are read, and left as it was; a
    train run's own folder may be trained into again."""
    import fer_tune.data.fer2013

    results = tmp_path / "r"
    argv = [
        "train",
        "--smoke",
        "--epochs",
        "1",
        "--width",
        "0.0625",
        "--data",
        str(chain_csv),
        "--results",
        str(results),
    ]
    mine = results / "train" / "mine"
    mine.mkdir(parents=True)
    (mine / "metrics.csv").write_text("my numbers")
    (mine / "config.yaml").write_text("# my own notes\nlr: 1\n")
    with monkeypatch.context() as patch:
        patch.setattr(fer_tune.data.fer2013, "load_run_data", lambda *a: pytest.fail("the data were read first"))
        assert main([*argv, "--name", "mine"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {mine}: this folder was not made by a fer-tune train run") and "--name" in err, err
    assert len(err.splitlines()) == 1 and sorted(p.name for p in mine.iterdir()) == ["config.yaml", "metrics.csv"]
    assert (mine / "metrics.csv").read_text() == "my numbers"

    assert main([*argv, "--name", "again"]) == 0
    first = (results / "train" / "again" / "metrics.csv").read_text()
    assert main([*argv, "--name", "again", "--epochs", "2"]) == 0  # its own run: trained into again
    assert (results / "train" / "again" / "metrics.csv").read_text() != first
