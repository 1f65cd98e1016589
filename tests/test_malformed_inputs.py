"""Issue 24, class 6: every command, given each kind of malformed input it reads (data files, YAML,
checkpoints, a search folder's tables and study, numbers), answers with one ``error:`` line and exit 2,
never a traceback. One table for all commands; the other reliability tests check each message's words."""

from __future__ import annotations

import gzip
import lzma
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fer_tune.cli import main


@dataclass(frozen=True)
class Inputs:
    """Malformed files (and one good data file) made once for the table."""

    root: Path
    good_csv: Path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.root / name
        if not path.exists():
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def truncated_xz(self) -> Path:
        return self.file("cut.csv.xz", lzma.compress(self.good_csv.read_bytes()[:50_000])[:400])

    def truncated_gz(self) -> Path:
        return self.file("cut.csv.gz", gzip.compress(self.good_csv.read_bytes()[:50_000])[:400])

    def text_named_xz(self) -> Path:
        return self.file("text.csv.xz", "emotion,pixels,Usage\n0,1 2 3,Training\n")

    def junk_csv(self) -> Path:
        return self.file("junk.csv", "emotion,pixels,Usage\nhappy,not pixels,Training\n")

    def empty(self) -> Path:
        return self.file("empty.csv", b"")

    def checkpoint(self, name: str, payload) -> Path:
        path = self.root / name
        if not path.exists():
            torch.save(payload, path)
        return path

    def junk_checkpoint(self) -> Path:
        return self.file("junk.pt", b"\x00not a checkpoint" * 10)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    from fer_tune.data.demo import DemoSpec, write_demo_csv

    root = tmp_path_factory.mktemp("malformed")
    return Inputs(root, write_demo_csv(root / "good.csv", DemoSpec(3, 2, 2, seed=1)))


def _data_cases() -> list[tuple[str, object]]:
    """Each malformed data file, under every command that reads --data (or a data path)."""
    files = {
        "truncated xz": Inputs.truncated_xz,
        "truncated gz": Inputs.truncated_gz,
        "text named .xz": Inputs.text_named_xz,
        "junk rows": Inputs.junk_csv,
        "empty file": Inputs.empty,
    }
    commands = {
        "data": lambda i, f: ["data", str(f)],
        "train": lambda i, f: ["train", "--smoke", "--data", str(f), "--results", str(i.root / "r")],
        "search": lambda i, f: ["--search", "vgg", "--smoke", "--data", str(f), "--results", str(i.root / "r")],
    }
    return [
        (f"{command} / {kind}", lambda i, make=make, argv=argv: argv(i, make(i)))
        for kind, make in files.items()
        for command, argv in commands.items()
    ]


YAML_KINDS = {
    "a list": "- model\n- vgg\n",
    "model is a list": "model: [vgg]\n",
    "unhashable key": "model: vgg\n? [1, 2]\n: x\n",
    "a string": "just words\n",
    "syntax error": "model: vgg\n  lr: [\n",
    "binary": "\x00\x01\x02",
}


def _yaml_cases() -> list[tuple[str, object]]:
    cases = []
    for kind, text in YAML_KINDS.items():
        name = kind.replace(" ", "_") + ".yaml"
        cases.append(
            (f"train --config / {kind}", lambda i, n=name, t=text: ["train", "--smoke", "--config", str(i.file(n, t))])
        )
        cases.append(
            (
                f"search space / {kind}",
                lambda i, n=name, t=text: [
                    "--search",
                    str(i.file(n, t)),
                    "--data",
                    str(i.good_csv),
                    "--results",
                    str(i.root / "r"),
                ],
            )
        )
    return cases


CHECKPOINTS = {
    "not a checkpoint": lambda i: i.junk_checkpoint(),
    "a tensor": lambda i: i.checkpoint("tensor.pt", torch.zeros(3)),
    "model is a tensor": lambda i: i.checkpoint("model_tensor.pt", {"model": torch.zeros(3), "config": {}}),
    "config is a string": lambda i: i.checkpoint("config_str.pt", {"model": {}, "config": "vgg"}),
}


def _checkpoint_cases() -> list[tuple[str, object]]:
    commands = {
        "evaluate": lambda i, c: ["evaluate", "--checkpoint", str(c), "--data", str(i.good_csv)],
        "predict": lambda i, c: [
            "predict",
            "--checkpoint",
            str(c),
            str(i.good_csv.parent),
            "--out",
            str(i.root / "p.csv"),
        ],
        "export": lambda i, c: ["export", "--checkpoint", str(c), "--out", str(i.root / "m.onnx")],
        "train --base-checkpoint": lambda i, c: [
            "train",
            "--smoke",
            "--base-checkpoint",
            str(c),
            "--results",
            str(i.root / "r"),
        ],
    }
    return [
        (f"{command} / {kind}", lambda i, make=make, argv=argv: argv(i, make(i)))
        for kind, make in CHECKPOINTS.items()
        for command, argv in commands.items()
    ]


NUMBERS = [
    ("demo-data --per-class 0", lambda i: ["demo-data", str(i.root / "d.csv"), "--per-class", "0"]),
    ("demo-data --seed -1", lambda i: ["demo-data", str(i.root / "d.csv"), "--seed", "-1"]),
    ("search --seed -1", lambda i: ["--search", "vgg", "--smoke", "--seed", "-1", "--results", str(i.root / "r")]),
    ("search --trials 0", lambda i: ["--search", "vgg", "--smoke", "--trials", "0", "--results", str(i.root / "r")]),
    ("train --epochs 0", lambda i: ["train", "--smoke", "--epochs", "0", "--results", str(i.root / "r")]),
    ("train --lr nan", lambda i: ["train", "--smoke", "--lr", "nan", "--results", str(i.root / "r")]),
    (
        "predict --batch-size 0",
        lambda i: ["predict", "--checkpoint", str(i.junk_checkpoint()), str(i.root), "--batch-size", "0"],
    ),
]

CASES = [*_data_cases(), *_yaml_cases(), *_checkpoint_cases(), *NUMBERS]


@pytest.mark.parametrize("case,argv", CASES, ids=[c[0] for c in CASES])
def test_every_command_answers_malformed_input_with_one_error_line(inputs, capsys, case, argv):
    status = main(argv(inputs))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, (case, out + err)
    assert status == 2, (case, status, out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)


def test_a_search_folders_junk_tables_and_study_are_one_error_line(tmp_path, tiny_csv, capsys):
    """--retrain with an empty or junk trials.csv, --analyze with a junk optuna.db: pandas' and
    SQLAlchemy's tracebacks before; now the file named and how to rebuild it."""
    from test_reliability3 import _made_search

    _, folder = _made_search(tmp_path, tiny_csv)
    results = str(tmp_path / "r")
    retrain = ["--retrain", "cont", "--data", str(tiny_csv), "--results", results]
    for content, says in (
        (b"", "(it is empty)"),
        (b'\x00garbage,,\n"unterminated\n', "(it is not a CSV table)"),
        (b"trial,trial_id\n1,a\n", "(no column status, best_val_acc)"),
    ):
        (folder / "trials.csv").write_bytes(content)
        assert main(retrain) == 2
        err = capsys.readouterr().err.strip()
        assert (
            err == f"error: {folder / 'trials.csv'}: not the trials table fer-tune writes {says}; run the same "
            "--search again to rewrite it (or --search ... --fresh to start over)"
        ), err
    for content, says in ((b"", "no study named 'cont'"), (b"hello, not SQLite", "not an SQLite database")):
        (folder / "optuna.db").write_bytes(content)
        assert main(["--analyze", "cont", "--results", results]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {folder / 'optuna.db'}: not the Optuna study fer-tune's search wrote ({says}")
        assert len(err.splitlines()) == 1, err
