"""Using a winner: ``launch.py predict`` (faces found in photos, folders and videos) and
``launch.py export`` (ONNX / torch.export files whose parity the command checks itself)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fer_tune import EMOTIONS
from fer_tune.cli import main
from fer_tune.data.demo import draw_faces
from fer_tune.models import create_model
from fer_tune.training.checkpoint import model_payload, save_checkpoint
from fer_tune.training.config import TrainConfig

cv2 = pytest.importorskip("cv2", reason="the deploy extra (opencv-python-headless) is not installed")


def _checkpoint(tmp_path: Path, model: str = "vgg_spinal", logit_scale: float = 20.0, **options) -> Path:
    """A fer-tune checkpoint of an untrained ``model``, its last layer scaled so logits are not tiny."""
    torch.manual_seed(0)
    net = create_model(model, **options)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(logit_scale)
    config = TrainConfig(model=model, **options)
    path = tmp_path / f"{model}.pt"
    save_checkpoint(path, model_payload(config.to_dict(), net.state_dict(), 1, 0.5))
    return path


def _demo_faces(n: int = 7, seed: int = 1) -> np.ndarray:
    return draw_faces(np.arange(n) % 7, np.random.default_rng(seed))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------ predict


def test_predict_writes_a_row_per_face_and_per_unreadable_file(tmp_path, capsys, monkeypatch):
    """Face crops (48x48) are classified whole; a photo with no face, a text file, a broken JPEG and
    an unreadable video are one row each with the reason; a video gives a row per frame; the other
    files go on. Probabilities sum to 1 and the label is their argmax."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, face in enumerate(_demo_faces()):
        cv2.imwrite(str(folder / f"face{i}.png"), face)
    cv2.imwrite(str(folder / "empty_room.png"), np.full((300, 400), 90, np.uint8))
    (folder / "notes.txt").write_text("not a picture")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "broken.mp4").write_bytes(b"not a video")
    video = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for k in range(6):
        video.write(np.full((240, 320, 3), 60 + 10 * k, np.uint8))
    video.release()
    out, annotate = tmp_path / "out" / "predictions.csv", tmp_path / "annotated"
    import fer_tune.deploy.predict

    monkeypatch.setattr(fer_tune.deploy.predict, "PROGRESS_EVERY_S", 0.0)  # a progress line after every picture

    rc = main(
        [
            "predict",
            "--checkpoint",
            str(_checkpoint(tmp_path)),
            str(folder),
            "--out",
            str(out),
            "--annotate",
            str(annotate),
            "--every",
            "2",
            "--batch-size",
            "3",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    table = pd.read_csv(out)
    by_file = {Path(f).name: rows for f, rows in table.groupby("file")}
    assert set(by_file) == {
        *(f"face{i}.png" for i in range(7)),
        "empty_room.png",
        "notes.txt",
        "broken.jpg",
        "broken.mp4",
        "clip.avi",
    }
    faces = table[table["error"].isna()]
    assert len(faces) == 7 and set(faces["found_by"]) == {"whole image"}
    assert (faces[["x", "y", "w", "h"]].to_numpy() == [0, 0, 48, 48]).all()
    probabilities = faces[[f"p_{e}" for e in EMOTIONS]].to_numpy()
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert list(faces["label"]) == [EMOTIONS[i] for i in probabilities.argmax(1)]
    assert by_file["empty_room.png"]["error"].item() == "no face found"
    assert by_file["notes.txt"]["error"].item() == "not an image or video OpenCV can read"
    assert by_file["broken.jpg"]["error"].item() == "not an image OpenCV can read"
    assert by_file["broken.mp4"]["error"].item() == "not a video OpenCV can read"
    assert list(by_file["clip.avi"]["frame"]) == [0, 2, 4]  # --every 2; plain frames hold no face
    assert set(by_file["clip.avi"]["error"]) == {"no face found"}
    assert sorted(p.name for p in annotate.glob("*.png")) == [f"face{i}.png" for i in range(7)]
    assert "faces/s" in printed and "gave no face" in printed
    assert re.search(r"\] predict: \d+/12 files \(clip\.avi frame 4/6\), \d+ faces classified", printed), printed
    assert re.search(r"\[\d\d:\d\d:\d\d \d:\d\d:\d\d left ~\d:\d\d:\d\d\] predict: 11/12 files", printed), printed


@pytest.mark.slow
def test_predict_computes_what_evaluate_scored(tmp_path, tiny_data, capsys):
    """The same faces through predict (as PNG files) and through the scoring path give the same
    probabilities: one set of evaluation views, ten-crop and single; and so does the checkpoint's ONNX
    export run by predict in ONNX Runtime."""
    from fer_tune.training.augment import AugmentConfig, BatchAugmenter
    from fer_tune.training.evaluate import model_from_checkpoint
    from fer_tune.training.views import predict_logits

    images, _ = tiny_data.role("val")
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, face in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), face)
    checkpoint = _checkpoint(tmp_path, "vgg_progressive_spinal", width=0.125)
    model, _ = model_from_checkpoint(checkpoint, torch.device("cpu"))
    augmenter = BatchAugmenter(AugmentConfig(recipe="vgg"), torch.Generator())
    for crops in ("ten", "single"):
        out = tmp_path / f"{crops}.csv"
        assert main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(out), "--crops", crops]) == 0
        table = pd.read_csv(out).sort_values("file")
        expected = predict_logits(model, torch.from_numpy(images), augmenter, crops).softmax(1).numpy()
        got = table[[f"p_{e}" for e in EMOTIONS]].to_numpy()
        assert np.abs(got - expected).max() < 1e-5, crops
    # the exported ONNX file runs in predict too (ONNX Runtime), with the same result
    assert main(["export", "--checkpoint", str(checkpoint)]) == 0
    onnx_file = checkpoint.with_suffix(".onnx")
    assert main(["predict", "--checkpoint", str(onnx_file), str(folder), "--out", str(tmp_path / "onnx.csv")]) == 0
    ten, onnx = (pd.read_csv(tmp_path / f"{n}.csv").sort_values("file") for n in ("ten", "onnx"))
    assert (
        np.abs(onnx[[f"p_{e}" for e in EMOTIONS]].to_numpy() - ten[[f"p_{e}" for e in EMOTIONS]].to_numpy()).max()
        < 1e-5
    )
    assert main(["predict", "--checkpoint", str(onnx_file), str(folder), "--crops", "single"]) == 2
    assert "was exported with ten-crop views" in _one_error_line(capsys)


@pytest.mark.slow
def test_predict_finds_real_faces_pasted_into_a_photo(tmp_path, real_csv, capsys):
    """Real FER2013 faces (PublicTest), enlarged 3x and pasted two to a 640x360 'photo', and the same
    photo as video frames: the bundled detector finds most of them (measured: 78% of single pasted
    faces), every box it reports lies on a pasted face, and each found face gets its seven
    probabilities."""
    from fer_tune.data.fer2013 import load_fer

    images, _ = load_fer(real_csv).split("PublicTest")
    folder = tmp_path / "photos"
    folder.mkdir()
    placed: dict[str, list[tuple[int, int]]] = {}
    side = 144
    for k in range(10):
        canvas = np.full((360, 640), 128, np.uint8)
        corners = [(40, 60), (400, 110)]
        for (x, y), face in zip(corners, images[2 * k : 2 * k + 2]):
            canvas[y : y + side, x : x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"photo{k}.png"), cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
        placed[f"photo{k}.png"] = corners
    video = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (640, 360))
    for _ in range(3):
        video.write(cv2.imread(str(folder / "photo0.png")))
    video.release()
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--checkpoint", str(_checkpoint(tmp_path)), str(folder), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    found = table[table["error"].isna()]
    photos = found[~found["file"].str.endswith("clip.avi")]
    for row in photos.itertuples():
        centre = (row.x + row.w / 2, row.y + row.h / 2)
        assert any(x < centre[0] < x + side and y < centre[1] < y + side for x, y in placed[Path(row.file).name]), row
        assert 0.5 * side < row.w < 2 * side, row
    assert len(photos) >= 12, f"found {len(photos)} of 20 pasted faces"
    assert (found["found_by"] == "detector").all()
    assert sorted(set(found[found["file"].str.endswith("clip.avi")]["frame"])) == [0, 1, 2]
    assert "faces/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case", ["foreign checkpoint", "foreign onnx", "missing path", "foreign out", "foreign annotate", "batch size 0"]
)
def test_predict_refuses_bad_input_before_anything(tmp_path, capsys, case):
    """One error line, exit 2, and nothing written, for each mistake."""
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), _demo_faces(1)[0])
    checkpoint = _checkpoint(tmp_path)
    out = tmp_path / "out.csv"
    argv = ["predict", "--checkpoint", str(checkpoint), str(face), "--out", str(out)]
    expect = {
        "foreign checkpoint": "not a fer-tune checkpoint",
        "foreign onnx": "not an ONNX model fer-tune exported",
        "missing path": "no such file or folder",
        "foreign out": "not a predictions CSV fer-tune wrote",
        "foreign annotate": "did not make holds files",
        "batch size 0": "--batch-size 0 is not allowed",
    }[case]
    if case == "foreign checkpoint":
        torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
        argv[2] = str(tmp_path / "other.pt")
    elif case == "foreign onnx":
        import onnx

        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "other",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
        onnx.save(onnx.helper.make_model(graph), tmp_path / "other.onnx")
        argv[2] = str(tmp_path / "other.onnx")
    elif case == "missing path":
        argv[3] = str(tmp_path / "no-such-photo.jpg")
    elif case == "foreign out":
        out.write_text("name,score\nmine,1\n")
    elif case == "foreign annotate":
        (tmp_path / "album").mkdir()
        (tmp_path / "album" / "holiday.jpg").write_bytes(b"mine")
        argv += ["--annotate", str(tmp_path / "album")]
    else:
        argv += ["--batch-size", "0"]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(argv) == 2
    assert expect in _one_error_line(capsys)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------ export


@pytest.mark.parametrize(
    "model,fmt,crops",
    [
        ("vgg_progressive_spinal", "onnx", "ten"),
        ("vgg", "pt2", "ten"),
        ("effnetv2s", "onnx", "single"),
        ("vit_l32_spinal", "onnx", "ten"),
    ],
)
@pytest.mark.slow
def test_export_runs_in_onnx_runtime_like_pytorch(tmp_path, capsys, monkeypatch, model, fmt, crops, tiny_vit_folder):
    """Each family exports (ViT with a one-layer stand-in for size: the same code path, the upscale to
    224 inside the graph; EfficientNetV2-S at a quarter of its depth and channels: the same kinds of
    blocks, a third of the graph); the file runs any batch size and agrees with PyTorch within 1e-3."""
    import timm

    create = timm.create_model
    monkeypatch.setattr(
        timm, "create_model", lambda name, **kw: create(name, channel_multiplier=0.25, depth_multiplier=0.25, **kw)
    )
    options = (
        {"width": 0.125}
        if model.startswith("vgg")
        else {"pretrained_path": str(tiny_vit_folder)}
        if model.startswith("vit")
        else {}
    )
    scale = 200.0 if model == "effnetv2s" else 20.0  # the small stand-in's untrained logits are smaller
    checkpoint = _checkpoint(tmp_path, model, logit_scale=scale, **options)
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--crops", crops]) == 0
    out = checkpoint.with_suffix(f".{fmt}")
    printed = capsys.readouterr().out
    assert f"{out} (" in printed and "max |logit difference|" in printed
    import yaml

    card = yaml.safe_load(Path(f"{out}.yaml").read_text())
    assert (
        card["model"] == model
        and card["bytes"] == out.stat().st_size
        and card["parity"]["max_abs_logit_difference"] <= 1e-3
    )
    assert card["parity"]["max_abs_logit"] > 0.1  # the check compared logits of a real size
    assert card["views"].startswith("10 (ten-crop" if crops == "ten" and model != "vit_l32_spinal" else "1 (")
    faces = _demo_faces(5, seed=3)[:, None].astype(np.float32)
    from fer_tune.deploy.inference import load_face_classifier

    classifier, _ = load_face_classifier(checkpoint, torch.device("cpu"), crops)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(faces)).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits, probabilities = session.run(None, {"images": faces})
    else:
        program = torch.export.load(str(out)).module()
        logits, probabilities = (t.detach().numpy() for t in program(torch.from_numpy(faces)))
    assert logits.shape == (5, 7) and np.abs(logits - expected).max() < 1e-3
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_export_that_does_not_match_pytorch_writes_nothing(tmp_path, capsys, monkeypatch):
    """A parity failure is an error (exit 1) and leaves no file; an existing file fer-tune did not
    export is never replaced."""
    import fer_tune.deploy.export as export

    checkpoint = _checkpoint(tmp_path, "vgg", width=0.125)
    real = export._onnx
    monkeypatch.setattr(export, "_onnx", lambda *a: lambda x, run=real(*a): run(x) + 0.01)  # noqa: B008
    assert main(["export", "--checkpoint", str(checkpoint)]) == 1
    assert "differ from PyTorch's by up to 0.01" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg.pt"]
    monkeypatch.undo()
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"someone else's model")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(mine)]) == 2
    assert "fer-tune did not export it" in _one_error_line(capsys) and mine.read_bytes() == b"someone else's model"
