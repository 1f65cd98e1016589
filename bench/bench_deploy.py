"""Using a winner: faces per second of ``launch.py predict`` (PyTorch vs ONNX Runtime, batch 1 and 64)
and the size of the exported file of each model.

    python bench/bench_deploy.py                # VGGSpinalNet speed + every model's ONNX size (ViT-L: ~2 min, ~8 GB)
    python bench/bench_deploy.py --no-vit

Untrained weights at the paper's sizes (speed and bytes do not depend on the values). The speed runs
``run_predict`` end to end on a folder of 48x48 face PNGs (read, classified whole, CSV written), once
per backend and batch size, side by side in one process; "classifier alone" is the time inside the
model calls. Prints a Markdown table (paste it into bench/README.md with the machine named).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer_tune.data.demo import draw_faces
from fer_tune.deploy.export import export_checkpoint
from fer_tune.deploy.predict import PredictOptions, run_predict
from fer_tune.models import MODELS, create_model
from fer_tune.training.checkpoint import model_payload, save_checkpoint
from fer_tune.training.config import TrainConfig


def write_checkpoint(folder: Path, model: str) -> Path:
    """An untrained fer-tune checkpoint of ``model`` at the paper's size."""
    torch.manual_seed(0)
    net = create_model(model)
    path = folder / f"{model}.pt"
    save_checkpoint(path, model_payload(TrainConfig(model=model).to_dict(), net.state_dict(), 0, 0.0))
    return path


def speed(folder: Path, model: str = "vgg_spinal", faces: int = 256) -> list[str]:
    """Rows: faces/s of predict for PyTorch and ONNX Runtime at batch 1 and 64."""
    import cv2

    pictures = folder / "faces"
    pictures.mkdir()
    for i, face in enumerate(draw_faces(np.arange(faces) % 7, np.random.default_rng(0))):
        cv2.imwrite(str(pictures / f"{i:04d}.png"), face)
    checkpoint = write_checkpoint(folder, model)
    onnx_file = export_checkpoint(checkpoint, "onnx", log=lambda line: None).path
    rows = []
    for batch in (1, 64):
        for backend, path in (("PyTorch", checkpoint), ("ONNX Runtime", onnx_file)):
            opts = PredictOptions(
                checkpoint=path, paths=[pictures], out=folder / "p.csv", batch_size=batch, device="cpu"
            )
            summary = run_predict(opts, log=lambda line: None)
            rows.append(
                f"| {model} | {backend} | {batch} | {summary.faces} | {summary.faces_per_second:.1f} | "
                f"{summary.classifier_faces_per_second:.1f} |"
            )
    return rows


def sizes(folder: Path, with_vit: bool) -> list[str]:
    """Rows: the ONNX file of each model, its bytes, export + check time."""
    rows = []
    for model in MODELS:
        if model.startswith("vit") and not with_vit:
            continue
        checkpoint = write_checkpoint(folder, model)
        started = time.perf_counter()
        result = export_checkpoint(checkpoint, "onnx", log=lambda line: None)
        seconds = time.perf_counter() - started
        params = sum(t.numel() for t in torch.load(checkpoint, weights_only=True)["model"].values())
        rows.append(
            f"| {model} | {params / 1e6:.1f} M | {result.bytes / 1e6:.1f} MB | "
            f"{os.path.getsize(checkpoint) / 1e6:.1f} MB | {seconds:.0f} s | {result.max_abs_diff:.1g} |"
        )
        for path in (checkpoint, result.path, result.card):
            path.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-vit", action="store_true", help="leave the ViT-L/32 exports out")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory() as tmp:
        print("| model | backend | batch | faces | predict faces/s (end to end) | classifier alone faces/s |")
        print("| --- | --- | --- | --- | --- | --- |")
        print("\n".join(speed(Path(tmp))))
        print("\n| model | parameters | ONNX file | checkpoint (.pt) | export + parity check | max logit difference |")
        print("| --- | --- | --- | --- | --- | --- |")
        print("\n".join(sizes(Path(tmp), not args.no_vit)))


if __name__ == "__main__":
    main()
