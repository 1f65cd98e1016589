"""Reliability round 4 (issue 45), one test (or table) per class; the classes are the issue's numbers."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from fer_tune.cli import main
from fer_tune.run_folder import TRAIN_CONFIG_HEADER, train_folder
from fer_tune.training.config import TrainConfig
from fer_tune.training.engine import Trainer

TRAIN = ["train", "--smoke", "--epochs", "1", "--width", "0.0625"]


def test_a_second_train_run_with_one_name_is_refused_naming_the_first(tmp_path, tiny_csv, capsys):
    """Class 1: two `train --name x` at once both exited 0, one run's metrics.csv and best.pt belonging to
    the other. The second now stops before reading any data, naming the first; the first's folder is
    untouched, and a run may take the name again once the first is done."""
    folder = tmp_path / "r" / "train" / "x"
    argv = TRAIN + ["--data", str(tiny_csv), "--results", str(tmp_path / "r"), "--name", "x"]
    with train_folder(folder):  # the first run, still training
        (folder / "config.yaml").write_text(f"{TRAIN_CONFIG_HEADER}; the first run's\n")
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"another train run with this name is running (pid {os.getpid()})" in err, err
        assert "data" not in capsys.readouterr().out
        assert sorted(p.name for p in folder.iterdir()) == [".lock", "config.yaml"]
        assert "the first run's" in (folder / "config.yaml").read_text()
    assert main(argv) == 0
    assert (folder / "best.pt").is_file()
    with train_folder(folder):  # --resume is refused the same way while another run holds the folder
        assert main(["train", "--resume", str(folder)]) == 2
        assert "another train run with this name is running" in capsys.readouterr().err


def test_a_train_run_that_fails_at_once_leaves_no_folder_even_when_locked(tmp_path, capsys):
    """The lock's own file does not keep a failed start's folder, nor make the folder someone else's."""
    out = tmp_path / "r"
    assert main(TRAIN + ["--data", str(tmp_path / "missing.csv"), "--results", str(out), "--name", "y"]) == 2
    assert not (out / "train" / "y").exists()
    (out / "train" / "z").mkdir(parents=True)
    (out / "train" / "z" / ".lock").write_text("pid 1\ntrain run")  # left by a run killed before its first epoch
    with train_folder(out / "train" / "z"):
        pass


def _poison_the_last_step(trainer: Trainer) -> None:
    """After the epoch's last optimizer step, one weight becomes NaN: the training loss stays finite."""
    steps = {"n": 0}

    def hook(optimizer, args, kwargs):
        steps["n"] += 1
        if steps["n"] == trainer.batches_per_epoch:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    trainer.optimizer.register_step_post_hook(hook)


def test_an_epoch_that_ends_in_non_finite_weights_is_a_divergence(tiny_data):
    """Class 5: `train --lr 1000` kept an epoch with `val loss nan` as best (every weight NaN) and exited 0.
    An epoch whose loss or weights are not finite never scores."""
    config = TrainConfig(model="vgg", width=0.0625, batch_size=32, epochs=2, optimizer="sgd_nesterov", lr=0.01)
    trainer = Trainer(config, tiny_data.role("train"), tiny_data.role("val"))
    _poison_the_last_step(trainer)
    result = trainer.step_epoch()
    assert result.diverged and result.val_acc == 0.0
    assert trainer.best_val_acc < 0  # nothing scored


def test_a_train_run_whose_only_epoch_ends_in_nan_weights_keeps_no_model(tmp_path, tiny_csv, monkeypatch, capsys):
    """Class 5 through the command: the documented "diverged before any epoch scored" error, no best.pt."""
    original = Trainer.fit

    def fit(self, on_epoch=None):
        _poison_the_last_step(self)
        return original(self, on_epoch)

    monkeypatch.setattr(Trainer, "fit", fit)
    argv = TRAIN + ["--data", str(tiny_csv), "--results", str(tmp_path / "r"), "--name", "nan"]
    assert main(argv) == 2
    assert "diverged at epoch 1 before any epoch scored, so no model was kept" in capsys.readouterr().err
    assert not (tmp_path / "r" / "train" / "nan" / "best.pt").exists()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


def test_a_damaged_cache_is_rebuilt_never_fatal(tmp_path, tiny_csv, caplog):
    """Class 3: a truncated `<csv>.fer-tune.npz` gave zipfile.BadZipFile on every later run."""
    from fer_tune.data.fer2013 import cache_path_for, file_md5, load_fer

    csv = tmp_path / "faces.csv"
    csv.write_bytes(tiny_csv.read_bytes())
    first = load_fer(csv)
    cache = cache_path_for(csv)
    cache.write_bytes(cache.read_bytes()[:1000])  # a cut-off copy, a full disk's partial write
    caplog.set_level("INFO", logger="fer_tune")
    assert file_md5(csv) == first.content_md5
    again = load_fer(csv)
    assert (again.images == first.images).all() and again.content_md5 == first.content_md5
    assert f"note: {cache}: a damaged cache (BadZipFile); reading the data file again" in caplog.text
    caplog.clear()
    load_fer(csv)  # rebuilt whole: read from the cache without a note
    assert "damaged" not in caplog.text


def test_a_cache_that_cannot_be_written_leaves_no_temporary_file(tmp_path, tiny_csv):
    """Class 3: one 229 KB temporary file was left per run when the cache's path is a folder."""
    from fer_tune.data.fer2013 import cache_path_for, load_fer

    csv = tmp_path / "faces.csv"
    csv.write_bytes(tiny_csv.read_bytes())
    cache_path_for(csv).mkdir()
    for _ in range(2):
        assert len(load_fer(csv).labels) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.csv", cache_path_for(csv).name]
    assert list(cache_path_for(csv).iterdir()) == []


@pytest.mark.parametrize("value", ["", "relative/cache"])
def test_an_empty_or_relative_xdg_cache_home_is_ignored(value, tmp_path, monkeypatch):
    """Class 3: XDG_CACHE_HOME="" put the cache in ./fer-tune/; the XDG spec says to ignore it."""
    from fer_tune.files import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", value)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "fer-tune"


def test_a_demo_cache_that_cannot_be_written_is_one_error_line(tmp_path, monkeypatch, capsys):
    """Class 2: a read-only (here: unusable) ~/.cache for the demo CSV ended in a traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert main(TRAIN + ["--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {blocker}/fer-tune/demo-"), err
    assert "cannot write the demo faces there (Not a directory); set XDG_CACHE_HOME" in err


@pytest.fixture
def plain_http_server():
    """A port where a plain HTTP/1 server answers (not gRPC: not a Ray head)."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # its request lines are not fer-tune's output
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_an_unreachable_ray_address_is_one_line_within_30_s(tmp_path, plain_http_server, monkeypatch, capsys):
    """Class 4: RAY_ADDRESS=127.0.0.1:1, or a port with a plain HTTP server, hung for ever in ray.init."""
    import socket
    import time

    from fer_tune.search.ray_setup import check_head_answers

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    for address in (closed, plain_http_server):
        with pytest.raises(Exception, match=f"RAY_ADDRESS={address}: cannot join the Ray cluster there"):
            check_head_answers(address, timeout_s=1)
    monkeypatch.setenv("RAY_ADDRESS", plain_http_server)
    started = time.monotonic()
    assert main(["--search", "vgg", "--smoke", "--results", str(tmp_path / "r")]) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot join the Ray cluster there (nothing answered" in err, err
    assert not (tmp_path / "r").exists()


EDITED_MANIFESTS = [
    ("budget: [1, 2]", lambda text: re.sub(r"^budget:\n(  .*\n)+", "budget: [1, 2]\n", text, flags=re.M), "budget"),
    ("seed: two", lambda text: re.sub(r"^seed: .*$", "seed: two", text, flags=re.M), "seed = 'two'"),
    (
        "data_md5 edited",
        lambda text: re.sub(r"^data_md5: .*$", "data_md5: 0123456789abcdef0123456789abcdef", text, flags=re.M),
        "records data",
    ),
]


@pytest.mark.parametrize("case,edit,expect", EDITED_MANIFESTS, ids=[c[0] for c in EDITED_MANIFESTS])
def test_a_hand_edited_manifest_is_named_as_such(tmp_path, tiny_csv, capsys, case, edit, expect):
    """Class 6: `budget: [1, 2]` was accepted; an edited data_md5 advised `--data` with the very file it had
    just rejected. Both now say the manifest does not match what fer-tune wrote or what it records."""
    from test_reliability3 import _made_search

    space, folder = _made_search(tmp_path, tiny_csv)
    manifest = folder / "manifest.yaml"
    manifest.write_text(edit(manifest.read_text()))
    before = manifest.read_text()
    if case != "data_md5 edited":  # refused where it is read (so the code before fails here, not mid-search)
        from fer_tune.errors import UserError
        from fer_tune.manifest import read_manifest

        with pytest.raises(UserError, match="the manifest was edited"):
            read_manifest(folder)
    assert main(["--search", str(space), "--data", str(tiny_csv), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {manifest}: ") and len(err.splitlines()) == 1, err
    assert expect in err and ("was edited" in err or "does not match what it records" in err), err
    assert f"give --data {tiny_csv}" not in err
    assert manifest.read_text() == before


def test_an_ensemble_member_that_is_an_ensemble_file_is_named_with_its_number(tmp_path, tiny_csv, capsys):
    """Class 6: an ensemble file listing another ensemble file as a member."""
    from fer_tune.training.ensemble_model import ENSEMBLE_KIND
    from fer_tune.yaml_files import write_yaml

    inner = write_yaml(tmp_path / "inner.yaml", {"kind": ENSEMBLE_KIND, "members": []})
    outer = write_yaml(
        tmp_path / "outer.yaml",
        {
            "kind": ENSEMBLE_KIND,
            "members": [{"checkpoint": "a.pt", "weight": 1.0}, {"checkpoint": inner.name, "weight": 1.0}],
        },
    )
    (tmp_path / "a.pt").write_bytes(b"")
    assert main(["evaluate", "--checkpoint", str(outer), "--data", str(tiny_csv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"member 2's checkpoint {inner} is itself an ensemble file" in err, err


def test_a_deleted_working_folder_is_named_before_torch_is_imported(tmp_path):
    """Class 6: run from a folder that was deleted, every command ended in a traceback."""
    import subprocess
    import sys

    gone = tmp_path / "gone"
    gone.mkdir()
    code = (
        "import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); from fer_tune.cli import main; "
        "rc = main(['data', 'x.csv']); assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    env = {**os.environ, "PWD": str(gone), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", code, str(gone)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"error: the current folder {gone} no longer exists (deleted or moved); cd to a folder that exists and run "
        "the command again"
    )


def test_sigterm_stops_a_run_whose_ctrl_c_is_ignored():
    """Class 7: started by `nohup` or as `cmd &` in a script, a run ignores SIGINT; SIGTERM, fer-tune's
    Ctrl-C, was then ignored too (a batch scheduler's stop did nothing; the suite's own SIGTERM checks failed
    when it ran in the background). It now stops the run as Ctrl-C does."""
    import signal

    from fer_tune.sigterm import sigterm_as_ctrl_c

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, before)
