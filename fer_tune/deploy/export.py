"""``launch.py export``: a checkpoint as a self-contained model file other programs can run.

The file holds :class:`fer_tune.deploy.inference.FaceClassifier`: input ``images``, float32
(batch, 1, 48, 48) grayscale pixel values 0..255 (the scaling to 0..1 is inside), any batch size;
outputs ``logits`` and ``probabilities`` (batch, 7) in FER2013's class order, averaged over the
checkpoint's evaluation views (ten 40x40 crops, or the one ViT view). Before the file is put in
place, the export checks itself: the exported model and PyTorch must agree within
:data:`PARITY_LIMIT` on every logit of a batch of faces and of a single face. A card beside it
(``<file>.yaml``) says what it is, where it came from and what the check measured.
"""

from __future__ import annotations

import datetime
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from fer_tune import EMOTIONS, __version__
from fer_tune.deploy.inference import INPUT_RANGE, ONNX_METADATA, FaceClassifier, load_face_classifier
from fer_tune.errors import DEPLOY_INSTALL, UserError
from fer_tune.files import check_creatable, write_atomic, write_text_atomic
from fer_tune.yaml_files import yaml_plain

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
PARITY_LIMIT = 1e-3
PARITY_FACES = 64
ONNX_OPSET = 18
SINGLE_FILE_LIMIT = 2 * 1024**3 - 64 * 1024**2  # ONNX's protobuf limit (one file), with room for the graph


class ParityError(Exception):
    """The exported model does not compute what PyTorch computes."""


@dataclass(frozen=True)
class ExportResult:
    """One exported file and its check."""

    path: Path
    card: Path
    bytes: int
    max_abs_diff: float
    faces: str  # what the parity check ran on


class _WithProbabilities(nn.Module):
    """The exported graph: logits and their softmax."""

    def __init__(self, classifier: FaceClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(images)
        return logits, logits.softmax(1)


def card_path(out: Path) -> Path:
    """The YAML card that describes an exported file (and marks it as fer-tune's)."""
    return out.with_name(out.name + ".yaml")


def default_out(checkpoint: Path, fmt: str) -> Path:
    return checkpoint.with_suffix(f".{fmt}")


def _is_card(path: Path) -> bool:
    """True for an export card fer-tune wrote (``made_by: fer-tune ...``)."""
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(values, dict) and str(values.get("made_by", "")).startswith("fer-tune")


def check_out(out: Path) -> None:
    """An existing ``out`` and its card ``out.yaml`` are replaced only when fer-tune exported them."""
    check_creatable(out, "--out")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; --out names the file to write")
    card = card_path(out)
    if card.exists() and not (card.is_file() and _is_card(card)):
        raise UserError(
            f"--out {out}: its card {card} would replace a file fer-tune did not write; fer-tune never "
            "overwrites other files: choose another --out"
        )
    if out.exists() and not card.is_file():
        raise UserError(
            f"--out {out}: exists and fer-tune did not export it (no {card_path(out).name} beside it); "
            "fer-tune never overwrites other files: choose another --out"
        )


def parity_faces(data_path: str | None) -> tuple[np.ndarray, str]:
    """uint8 faces (N, 48, 48) for the check: the validation split of ``data_path``, else demo faces."""
    if data_path:
        from fer_tune.data.fer2013 import load_fer

        images, _ = load_fer(data_path).role("val")
        return images[:PARITY_FACES], f"{min(len(images), PARITY_FACES)} validation faces of {data_path}"
    from fer_tune.data.demo import draw_faces

    labels = np.arange(PARITY_FACES) % len(EMOTIONS)
    return draw_faces(labels, np.random.default_rng(0)), f"{PARITY_FACES} built-in demo faces"


def _batch_dim() -> dict[str, dict[int, object]]:
    return {"images": {0: torch.export.Dim("batch", min=1, max=65536)}}


def _onnx(
    graph: nn.Module, sample: torch.Tensor, tmp: Path, metadata: dict[str, str]
) -> Callable[[np.ndarray], np.ndarray]:
    """Write the ONNX file (one file: weights inside); return a function running it in ONNX Runtime."""
    import onnxruntime as ort

    program = torch.onnx.export(
        graph,
        (sample,),
        input_names=["images"],
        output_names=["logits", "probabilities"],
        dynamic_shapes=_batch_dim(),
        opset_version=ONNX_OPSET,
        dynamo=True,
        verbose=False,
    )
    program.model.metadata_props.update(metadata)  # what predict needs to run the file on its own
    program.save(str(tmp), external_data=False)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"images": x})[0]


def _pt2(
    graph: nn.Module, sample: torch.Tensor, tmp: Path, metadata: dict[str, str]
) -> Callable[[np.ndarray], np.ndarray]:
    """Write the torch.export program; return a function running the program read back from the file."""
    program = torch.export.export(graph, (sample,), dynamic_shapes=_batch_dim())
    with open(tmp, "wb") as f:
        torch.export.save(program, f)
    with open(tmp, "rb") as f:  # a file object: the name of the temporary file does not end in .pt2
        loaded = torch.export.load(f).module()
    return lambda x: loaded(torch.from_numpy(x))[0].detach().numpy()


def parity(
    run: Callable[[np.ndarray], np.ndarray], classifier: FaceClassifier, faces: np.ndarray
) -> tuple[float, float]:
    """(largest |exported - PyTorch| over every logit of the batch and of its first face alone, largest
    |logit|: the scale the difference is measured against)."""
    x = faces[:, None].astype(np.float32)
    with torch.inference_mode():
        expected = classifier(torch.from_numpy(x)).numpy()
    worst = float(np.abs(run(x) - expected).max())
    return max(worst, float(np.abs(run(x[:1]) - expected[:1]).max())), float(np.abs(expected).max())


def _ensemble_card(model: nn.Module) -> dict:
    """The card's line for an ensemble (``ensemble.yaml`` exported as one graph): its member count."""
    from fer_tune.training.ensemble_model import WeightedEnsemble

    if not isinstance(model, WeightedEnsemble):
        return {}
    return {"ensemble": f"{len(model.members)} networks, logits averaged with their weights (one graph)"}


def export_checkpoint(
    checkpoint: Path,
    fmt: str = "onnx",
    out: Path | None = None,
    crops: str = "ten",
    data_path: str | None = None,
) -> ExportResult:
    """Export ``checkpoint`` as ``fmt`` to ``out``, check parity, write the card; the file appears only
    when the check passed (a :class:`ParityError` otherwise)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")):
        raise UserError(f"ONNX export needs onnx, onnxscript and onnxruntime; run {DEPLOY_INSTALL}")
    out = out or default_out(checkpoint, fmt)
    check_out(out)
    classifier, config = load_face_classifier(checkpoint, torch.device("cpu"), crops)
    if fmt == "onnx" and sum(p.numel() * p.element_size() for p in classifier.parameters()) > SINGLE_FILE_LIMIT:
        raise UserError(f"{checkpoint}: {config.model}'s weights exceed the 2 GB of one ONNX file; use --format pt2")
    faces, about = parity_faces(data_path)
    graph = _WithProbabilities(classifier).eval()
    sample = torch.from_numpy(faces[:2, None].astype(np.float32))
    writer = _onnx if fmt == "onnx" else _pt2
    metadata = {
        ONNX_METADATA["model"]: config.model,
        ONNX_METADATA["crops"]: crops,
        ONNX_METADATA["views"]: str(classifier.view_count),
    }
    measured: dict[str, float] = {}

    def write(tmp: Path) -> None:
        with torch.inference_mode(False), torch.no_grad():
            run = writer(graph, sample, tmp, metadata)
        measured["diff"], measured["scale"] = parity(run, classifier, faces)
        if not measured["diff"] <= PARITY_LIMIT:
            raise ParityError(
                f"{fmt} export of {checkpoint}: the exported model's logits differ from PyTorch's by up "
                f"to {measured['diff']:.3g} (limit {PARITY_LIMIT:g}) on {about}; nothing was written"
            )

    write_atomic(out, write)
    size = os.path.getsize(out)
    card = write_text_atomic(
        card_path(out),
        yaml.safe_dump(
            yaml_plain(
                {
                    "made_by": f"fer-tune {__version__}",
                    "exported": datetime.datetime.now().isoformat(timespec="seconds"),
                    "format": fmt,
                    "file": out.name,
                    "bytes": size,
                    "checkpoint": str(checkpoint),
                    "model": config.model,
                    **_ensemble_card(classifier.model),
                    "input": {
                        "name": "images",
                        "shape": ["batch", 1, 48, 48],
                        "dtype": "float32",
                        "values": f"grayscale pixel values {INPUT_RANGE} (scaled to 0..1 inside the graph)",
                    },
                    "outputs": {"logits": ["batch", 7], "probabilities": ["batch", 7], "classes": list(EMOTIONS)},
                    "views": f"{classifier.view_count} ({crops}-crop"
                    f"{', logits averaged' if classifier.view_count > 1 else ''})",
                    "parity": {
                        "faces": about,
                        "max_abs_logit_difference": measured["diff"],
                        "limit": PARITY_LIMIT,
                        "max_abs_logit": measured["scale"],
                        "batches": [len(faces), 1],
                    },
                    "train_config": config.to_dict(),
                }
            ),
            sort_keys=False,
        ),
    )
    log.info(
        f"export: {out} ({size / 1e6:.1f} MB, {fmt}); parity with PyTorch on {about}, batch sizes {len(faces)} and 1: "
        f"max |logit difference| {measured['diff']:.2g} (limit {PARITY_LIMIT:g}; logits up to {measured['scale']:.3g})"
    )
    log.info(f"export: card {card}")
    return ExportResult(out, card, size, measured["diff"], about)
