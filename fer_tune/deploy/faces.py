"""Faces in photos and videos: reading them with OpenCV, finding faces, cropping them as FER2013 did.

The detector is OpenCV's bundled Haar cascade (``haarcascade_frontalface_default.xml``, shipped
inside ``opencv-python-headless`` < 5, so nothing is downloaded). Its limits: frontal and near-frontal
faces only (no profiles), upright within about +-15 degrees, at least ``min_face`` pixels wide, and
some false positives on textured backgrounds. On real FER2013 faces pasted into a larger canvas its
box is, at the median, the size of FER2013's own crop (measured: crop side / box side 1.03 over 235
PublicTest faces), so the box is cropped as it is. An image whose sides are both at most
:data:`FACE_CROP_MAX` pixels is taken to be a face crop already (as FER2013's 48x48 images are).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_tune.data.image_header import too_large
from fer_tune.errors import DEPLOY_INSTALL, UserError

FACE_SIZE = 48
FACE_CROP_MAX = 64  # an image at most this many pixels on each side is a face crop, not a photo
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
CASCADE = "haarcascade_frontalface_default.xml"


def opencv():
    """The ``cv2`` module with its Haar cascades; a :class:`UserError` saying how to install it."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own complaints: quiet (the CSV says why)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2
    except ImportError:
        raise UserError(f"face detection needs OpenCV, which is not installed; run {DEPLOY_INSTALL}") from None
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise UserError(
            f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped them); run {DEPLOY_INSTALL}, "
            "which installs opencv-python-headless < 5"
        )
    return cv2


@dataclass(frozen=True)
class Box:
    """A face box in image pixels."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Frame:
    """One picture to look for faces in: an image, or one frame of a video (``frame`` >= 0)."""

    file: Path
    frame: int | None
    gray: np.ndarray | None  # uint8 (H, W); None when it could not be read
    error: str = ""
    frames_in_file: int = 1  # a video's frame count as OpenCV reports it (0 when unknown)


class FaceFinder:
    """OpenCV's frontal-face Haar cascade with fer-tune's settings."""

    def __init__(self, min_face: int = 32, scale_factor: float = 1.1, min_neighbors: int = 5):
        cv2 = opencv()
        self.cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
        if self.cascade.empty():
            raise UserError(f"OpenCV could not load its bundled {CASCADE}; reinstall it with {DEPLOY_INSTALL}")
        self.min_face, self.scale_factor, self.min_neighbors = min_face, scale_factor, min_neighbors

    def boxes(self, gray: np.ndarray) -> list[Box]:
        """The faces in a grayscale image, largest first."""
        found = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(self.min_face, self.min_face)
        )
        return sorted((Box(*map(int, b)) for b in found), key=lambda b: -b.w * b.h)


def is_face_crop(gray: np.ndarray) -> bool:
    """True for an image small enough to be a face crop already (FER2013's are 48x48)."""
    return max(gray.shape[:2]) <= FACE_CROP_MAX


def whole_image(gray: np.ndarray) -> Box:
    """The box of a whole image (a face crop given as it is)."""
    return Box(0, 0, gray.shape[1], gray.shape[0])


def face_crop(gray: np.ndarray, box: Box) -> np.ndarray:
    """The 48x48 uint8 face inside ``box``."""
    cv2 = opencv()
    face = gray[box.y : box.y + box.h, box.x : box.x + box.w]
    small = face.shape[0] < FACE_SIZE or face.shape[1] < FACE_SIZE
    return cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_CUBIC if small else cv2.INTER_AREA)


def files_under(paths: list[Path], skip: Path | None = None) -> list[Path]:
    """The files named, and every file below the folders named (sorted, hidden ones left out), without
    anything under ``skip`` (the annotation folder). A path that does not exist is a :class:`UserError`."""
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or folder; give images, folders of images or videos")
        if not (path.is_file() or path.is_dir()):  # a FIFO or a device would block or never end
            raise UserError(f"{path}: is a special file (a FIFO or device); give images, folders of images or videos")
    skip = skip.resolve() if skip else None
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and not (skip and p.resolve().is_relative_to(skip))
            )
        else:
            found.append(path)
    return found


def frames_of(path: Path, every: int = 1) -> Iterator[Frame]:
    """The pictures in one file: an image gives one, a video every ``every``-th frame; a file OpenCV
    cannot read gives one :class:`Frame` with the reason in ``error``."""
    cv2 = opencv()
    if path.suffix.lower() in VIDEO_SUFFIXES:
        yield from _video_frames(cv2, path, every)
        return
    if reason := too_large(path):
        yield Frame(path, None, None, reason)
        return
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.stat().st_size else None
    if gray is None:
        kind = "an image" if path.suffix.lower() in IMAGE_SUFFIXES else "an image or video"
        yield Frame(path, None, None, f"not {kind} OpenCV can read")
    else:
        yield Frame(path, None, gray)


def _video_frames(cv2, path: Path, every: int) -> Iterator[Frame]:
    video = cv2.VideoCapture(str(path))
    try:
        if not video.isOpened():
            yield Frame(path, None, None, "not a video OpenCV can read")
            return
        count = max(int(video.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        index, read_any = 0, False
        while True:
            ok, picture = video.read()
            if not ok:
                break
            read_any = True
            if index % every == 0:
                gray = picture if picture.ndim == 2 else cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
                yield Frame(path, index, gray, frames_in_file=count)
            index += 1
        if not read_any:
            yield Frame(path, None, None, "a video with no readable frame")
    finally:
        video.release()
