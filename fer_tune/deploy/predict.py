"""``launch.py predict``: a trained checkpoint on people's own photos, folders and videos.

Each picture goes through :mod:`fer_tune.deploy.faces` (read, find faces, crop 48x48 grayscale); the faces
are classified in batches on the device by :class:`fer_tune.deploy.inference.FaceClassifier` (the
checkpoint's own evaluation views). One CSV row per face, or per file / frame that gave none, with
the reason; with ``--annotate DIR`` a copy of each image with its boxes and labels drawn.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fer_tune import EMOTIONS
from fer_tune.clock import clock, stamp
from fer_tune.deploy.faces import (
    Box,
    FaceFinder,
    Frame,
    face_crop,
    files_under,
    frames_of,
    is_face_crop,
    opencv,
    whole_image,
)
from fer_tune.deploy.inference import open_face_model
from fer_tune.errors import UserError
from fer_tune.files import check_creatable, check_csv_replaceable, write_atomic, write_csv_atomic

log = logging.getLogger(__name__)

COLUMNS = ["file", "frame", "face", "x", "y", "w", "h", "found_by", "label", *(f"p_{e}" for e in EMOTIONS), "error"]
ANNOTATION_MARK = ".fer-tune-annotations"  # in an --annotate folder fer-tune made
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class PredictOptions:
    """What ``launch.py predict`` was asked to do."""

    checkpoint: Path
    paths: list[Path]
    out: Path
    annotate: Path | None = None
    detect: bool = True  # False: every image is taken whole as a face crop
    crops: str | None = None  # None: ten for a checkpoint, what an ONNX file was exported with
    batch_size: int = 64
    every: int = 1  # videos: every n-th frame
    min_face: int = 32
    device: str | None = None


@dataclass
class PredictSummary:
    """What a prediction run did, for the last lines and the benchmark."""

    files: int = 0
    pictures: int = 0
    faces: int = 0
    problems: int = 0
    seconds: float = 0.0
    classify_seconds: float = 0.0
    csv: Path | None = None

    @property
    def faces_per_second(self) -> float:
        """End to end: reading, detection and classification."""
        return self.faces / self.seconds if self.seconds else 0.0

    @property
    def classifier_faces_per_second(self) -> float:
        """The time inside the model calls only."""
        return self.faces / self.classify_seconds if self.classify_seconds else 0.0


def check_outputs(opts: PredictOptions) -> None:
    """Before anything runs: the CSV and the annotation folder may only replace what fer-tune wrote."""
    check_csv_replaceable(opts.out, "--out", COLUMNS, "a predictions CSV")
    folder = opts.annotate
    if folder is not None:
        check_creatable(folder, "--annotate")
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--annotate {folder}: is a file; --annotate names a folder for the annotated copies")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / ANNOTATION_MARK).exists():
            raise UserError(
                f"--annotate {folder}: a folder fer-tune did not make holds files; fer-tune writes only "
                "into new, empty or its own annotation folders: choose another"
            )


@dataclass
class _Pending:
    """Faces waiting for the next batch, with the rows they fill and the images to annotate."""

    faces: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    images: list[tuple[Path, list[dict]]] = field(default_factory=list)


class _Predictor:
    """One run: reads pictures, batches faces, fills rows, draws annotations."""

    def __init__(self, opts: PredictOptions):
        self.opts = opts
        opencv()  # a missing or unfit OpenCV is one error line before anything is read
        self.model = open_face_model(opts.checkpoint, opts.device, opts.crops)
        self.finder = FaceFinder(min_face=opts.min_face) if opts.detect else None
        self.rows: list[dict] = []
        self.pending = _Pending()
        self.summary = PredictSummary()
        self.annotated_names: set[str] = set()

    def faces_in(self, frame: Frame) -> tuple[list[Box], str]:
        """The boxes to classify in a picture, and how they were found."""
        if self.finder is None or is_face_crop(frame.gray):
            return [whole_image(frame.gray)], "whole image"
        return self.finder.boxes(frame.gray), "detector"

    def add(self, frame: Frame) -> None:
        """Queue one picture's faces (or record why it has none)."""
        base = {"file": str(frame.file), "frame": frame.frame}
        if frame.error:
            self.rows.append({**base, "error": frame.error})
            self.summary.problems += 1
            return
        self.summary.pictures += 1
        boxes, found_by = self.faces_in(frame)
        if not boxes:
            self.rows.append({**base, "found_by": "detector", "error": "no face found"})
            self.summary.problems += 1
            return
        rows = []
        for i, box in enumerate(boxes):
            row = {**base, "face": i, "x": box.x, "y": box.y, "w": box.w, "h": box.h, "found_by": found_by}
            self.pending.faces.append(face_crop(frame.gray, box))
            self.pending.rows.append(row)
            rows.append(row)
        self.rows += rows
        if self.opts.annotate is not None and frame.frame is None:
            self.pending.images.append((frame.file, rows))
        if len(self.pending.faces) >= self.opts.batch_size:
            self.flush()

    def flush(self) -> None:
        """Classify the queued faces in batches and draw the queued annotations."""
        pending, self.pending = self.pending, _Pending()
        start = time.perf_counter()
        for at in range(0, len(pending.faces), self.opts.batch_size):
            probabilities = self.model.probabilities(np.stack(pending.faces[at : at + self.opts.batch_size]))
            for row, p in zip(pending.rows[at : at + self.opts.batch_size], probabilities):
                row["label"] = EMOTIONS[int(p.argmax())]
                row.update({f"p_{e}": round(float(v), 6) for e, v in zip(EMOTIONS, p)})
        self.summary.classify_seconds += time.perf_counter() - start
        self.summary.faces += len(pending.faces)
        for path, rows in pending.images:
            self.annotate(path, rows)

    def annotate(self, path: Path, rows: list[dict]) -> None:
        """A copy of ``path`` with each face's box and label drawn, as PNG in the annotation folder."""
        cv2 = opencv()
        picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if picture is None:
            return
        thick = max(1, round(max(picture.shape[:2]) / 400))
        for row in rows:
            x, y, w, h = row["x"], row["y"], row["w"], row["h"]
            cv2.rectangle(picture, (x, y), (x + w, y + h), (0, 200, 0), thick)
            text = f"{row['label']} {row['p_' + row['label']]:.2f}"
            cv2.putText(
                picture, text, (x, max(y - 4 * thick, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 200, 0), thick
            )
        name = f"{path.stem}.png"
        n = 1
        while name in self.annotated_names:
            n += 1
            name = f"{path.stem}-{n}.png"
        self.annotated_names.add(name)
        ok, encoded = cv2.imencode(".png", picture)
        if ok:
            write_atomic(self.opts.annotate / name, lambda tmp: tmp.write_bytes(encoded.tobytes()))


def run_predict(opts: PredictOptions) -> PredictSummary:
    """Predict every face in ``opts.paths``; write the CSV (and annotated copies). Input mistakes are
    found before any file is read; a file that cannot be read is one CSV row, and the others go on."""
    check_outputs(opts)
    files = files_under(opts.paths, skip=opts.annotate)
    if not files:
        raise UserError(f"no files under {', '.join(map(str, opts.paths))}; give images, folders of images or videos")
    run = _Predictor(opts)
    if opts.annotate is not None:
        opts.annotate.mkdir(parents=True, exist_ok=True)
        (opts.annotate / ANNOTATION_MARK).touch()
    log.info(
        f"predict: {len(files)} file(s) with {run.model.model} from {opts.checkpoint} "
        f"({run.model.views} view(s) per face, {run.model.about})"
    )
    started = time.monotonic()
    last = started
    for done, path in enumerate(files):
        for frame in frames_of(path, opts.every):
            run.add(frame)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                log.info(_progress_line(started, done, len(files), frame, run.summary))
        run.summary.files += 1
    run.flush()
    summary = run.summary
    summary.seconds = time.monotonic() - started
    table = pd.DataFrame(run.rows, columns=COLUMNS).astype({c: "Int64" for c in ("frame", "face", "x", "y", "w", "h")})
    summary.csv = write_csv_atomic(table, opts.out)
    log.info(
        f"predict: {summary.faces} face(s) in {summary.pictures} picture(s) from {summary.files} file(s) in "
        f"{summary.seconds:.1f} s: {summary.faces_per_second:.1f} faces/s end to end (reading, detection, "
        f"classification), {summary.classifier_faces_per_second:.1f} faces/s for the classifier alone"
    )
    if summary.problems:
        log.info(f"predict: {summary.problems} file(s) or frame(s) gave no face; the CSV's error column says why")
    log.info(f"predictions: {summary.csv}" + (f"; annotated copies: {opts.annotate}" if opts.annotate else ""))
    return summary


def _progress_line(started: float, done: int, total: int, frame: Frame, summary: PredictSummary) -> str:
    """``[time elapsed left] predict: 3/10 files (video.mp4 frame 120/900), 42 faces``."""
    within = 0.0
    where = ""
    if frame.frame is not None:
        within = min(frame.frame / frame.frames_in_file, 1.0) if frame.frames_in_file else 0.0
        where = f" ({frame.file.name} frame {frame.frame}" + (
            f"/{frame.frames_in_file})" if frame.frames_in_file else ")"
        )
    fraction = (done + within) / total
    elapsed = time.monotonic() - started
    left = f"left ~{clock(elapsed / fraction * (1 - fraction))}" if fraction > 0 else "left ?"
    return f"{stamp(started, left)} predict: {done}/{total} files{where}, {summary.faces} faces classified"
