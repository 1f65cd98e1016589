"""FER2013's CSV layouts (Kaggle ``fer2013.csv``, ``icml_face_data.csv``, ``train.csv``), read with every
bad row named."""

from __future__ import annotations

import hashlib
import importlib
import io
import lzma
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fer_tune import EMOTIONS
from fer_tune.data.fer_data import (
    _PIXELS_PATTERN,
    HELD_OUT_FRACTION,
    HELD_OUT_VALIDATION,
    IMAGE_SIZE,
    NUM_PIXELS,
    OFFICIAL_SPLITS,
    FerData,
)
from fer_tune.errors import UserError


def _read_csv_layout(path: Path) -> FerData:
    frame, md5 = _read_csv_frame(path)
    return replace(_csv_data(path, frame), content_md5=md5)


def _csv_data(path: Path, frame: pd.DataFrame) -> FerData:
    columns = list(frame.columns)
    if "Usage" in columns:
        expected = {"emotion", "pixels", "Usage"}
    elif "emotion" in columns:
        expected = {"emotion", "pixels"}
    else:
        expected = {"emotion", "pixels", "Usage"}
    missing = expected - set(columns)
    extra = set(columns) - expected
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(sorted(missing))}")
        if extra:
            problems.append(f"unexpected column(s) {', '.join(sorted(extra))}")
        raise UserError(
            f"{path}: {'; '.join(problems)}; a FER2013 CSV has the header emotion,pixels,Usage "
            "(or emotion,pixels for Kaggle's train.csv)"
        )
    if len(frame) == 0:
        raise UserError(f"{path}: the file has a header but no rows; give the full FER2013 CSV")
    images = _parse_pixels(path, frame["pixels"])
    labels = _parse_labels(path, frame["emotion"])
    if "Usage" in columns:
        usage = _parse_usage(path, frame["Usage"])
        return FerData(
            images=images,
            labels=labels,
            usage=usage,
            split_names=OFFICIAL_SPLITS,
            roles={"train": "Training", "val": "PublicTest", "test": "PrivateTest"},
            source=str(path),
        )
    return _with_held_out_validation(
        images,
        labels,
        source=str(path),
        test=_labelled_test_csv_beside(path),
        note=f"{path.name} has no Usage column: all rows are Training; "
        f"{HELD_OUT_VALIDATION} is a seeded, stratified {HELD_OUT_FRACTION:.0%} held out of it",
    )


COMPRESSED_SUFFIXES = {".xz": "lzma", ".gz": "gzip", ".bz2": "bz2"}  # read as the CSV they hold


def _open_binary(path: Path):
    """``path`` opened for reading, decompressed on the fly when its suffix names a compression."""
    module = COMPRESSED_SUFFIXES.get(path.suffix.lower())
    return open(path, "rb") if module is None else importlib.import_module(module).open(path, "rb")


DECOMPRESSION_ERRORS = (EOFError, lzma.LZMAError, zlib.error)  # a truncated file, or not the compression named


def _not_decompressed(path: Path, exc: BaseException) -> str:
    return (
        f"{path}: cannot be decompressed ({str(exc) or type(exc).__name__}); the file may be truncated or not "
        f"{path.suffix[1:]}-compressed: copy it again, or give the plain CSV"
    )


def _decompressed(path: Path) -> bytes:
    """The whole content of ``path``, decompressed; a :class:`UserError` for a truncated or mislabelled file."""
    try:
        with _open_binary(path) as f:
            return f.read()
    except (OSError, *DECOMPRESSION_ERRORS) as exc:
        raise UserError(_not_decompressed(path, exc)) from None


def content_md5(path: Path) -> str:
    """MD5 of a file's content, decompressed when its suffix names a compression (so ``fer2013.csv.xz``
    has the md5 of the CSV it holds), read in 8 MiB chunks."""
    digest = hashlib.md5()
    with _open_binary(path) as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_csv_frame(path: Path) -> tuple[pd.DataFrame, str]:
    """The CSV's rows as text (the header row as column names) and the md5 of its content: the file is
    decompressed once, into memory, for both."""
    try:
        with _open_binary(path) as f:
            head = f.read(4096)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(
            f"{path}: cannot be read ({reason}); check the path, its permissions and its compression"
        ) from None
    except DECOMPRESSION_ERRORS as exc:
        raise UserError(_not_decompressed(path, exc)) from None
    if not head.strip():
        raise UserError(f"{path}: the file is empty; give the FER2013 CSV (header emotion,pixels,Usage)")
    if b"\x00" in head:
        raise UserError(f"{path}: this is a binary file, not a CSV; give the FER2013 CSV (header emotion,pixels,Usage)")
    try:
        raw = _decompressed(path)
        # header=None: a row with more fields than the header is an error, not a silent index column
        frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, skipinitialspace=True, header=None)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV (bytes that are not UTF-8); give the FER2013 CSV") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: malformed CSV ({exc}); every row must be emotion,pixels,Usage") from None
    frame.columns = [str(c).strip() for c in frame.iloc[0]]
    repeated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise UserError(
            f"{path}: column {repeated[0]!r} appears more than once in the header; "
            "a FER2013 CSV has the header emotion,pixels,Usage"
        )
    return frame.iloc[1:].reset_index(drop=True), hashlib.md5(raw).hexdigest()


def _bad_rows_message(path: Path, bad: np.ndarray, describe) -> str:
    first = int(bad[0])
    more = f" ({len(bad) - 1} more bad rows after it)" if len(bad) > 1 else ""
    return f"{path} line {first + 2} (data row {first + 1}): {describe(first)}{more}; fix or remove that row"


def _parse_pixels(path: Path, pixels: pd.Series) -> np.ndarray:
    """Vectorised parse of the pixel strings into uint8 (N, 48, 48); no per-row Python loop."""
    text = pixels.str.strip()
    digits_and_spaces = text.str.fullmatch(_PIXELS_PATTERN).to_numpy(dtype=bool)
    if not digits_and_spaces.all():
        raise UserError(
            _bad_rows_message(path, np.flatnonzero(~digits_and_spaces), lambda i: _pixel_problem(text.iloc[i]))
        )
    joined = "\n".join(text.tolist())
    wrong_count = np.flatnonzero(_spaces_per_row(text, joined) != NUM_PIXELS - 1)  # values per row = spaces + 1
    if len(wrong_count):
        raise UserError(_bad_rows_message(path, wrong_count, lambda i: _pixel_problem(text.iloc[i])))
    flat = np.fromstring(joined, dtype=np.uint16, sep=" ")
    values = flat.reshape(len(text), NUM_PIXELS)
    too_big = np.flatnonzero(values.max(axis=1) > 255)
    if len(too_big):
        raise UserError(
            _bad_rows_message(path, too_big, lambda i: f"pixel value {int(values[i].max())} is outside 0..255")
        )
    return values.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)


def _spaces_per_row(text: pd.Series, joined: str) -> np.ndarray:
    """Spaces in each row: Arrow's count_substring (0.5 s on FER2013) where pandas keeps the strings in
    Arrow, else counted on the bytes of ``joined`` (2.7 s; pandas' own str.count takes 8 s)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        pa = None
    if pa is not None:
        try:
            return np.asarray(pc.count_substring(pa.array(text.array), " "))
        except (TypeError, pa.ArrowException):
            pass
    lengths = text.str.len().to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths[:-1] + 1)])
    is_space = (np.frombuffer(joined.encode("ascii"), dtype=np.uint8) == ord(" ")).view(np.uint8)
    return np.add.reduceat(is_space, starts, dtype=np.int32)


def _pixel_problem(text: str) -> str:
    tokens = text.split()
    for token in tokens:
        if not token.lstrip("-").isdigit():
            return f"pixels holds {token[:20]!r}, which is not an integer (pixels are 2304 integers 0..255)"
        if not 0 <= int(token) <= 255:
            return f"pixel value {token} is outside 0..255"
    if len(tokens) != NUM_PIXELS:
        return f"pixels has {len(tokens)} values, expected {NUM_PIXELS} (48x48)"
    return "pixels must be 2304 integers 0..255 separated by single spaces"


def _parse_labels(path: Path, column: pd.Series) -> np.ndarray:
    text = column.str.strip()
    good = text.isin([str(i) for i in range(len(EMOTIONS))]).to_numpy(dtype=bool)
    if not good.all():
        raise UserError(
            _bad_rows_message(path, np.flatnonzero(~good), lambda i: f"emotion {text.iloc[i]!r} is not a label 0..6")
        )
    return text.astype(np.int64).to_numpy()


def _parse_usage(path: Path, column: pd.Series) -> np.ndarray:
    text = column.str.strip()
    codes = pd.Categorical(text, categories=list(OFFICIAL_SPLITS)).codes.astype(np.int8)
    bad = np.flatnonzero(codes < 0)
    if len(bad):
        raise UserError(
            _bad_rows_message(path, bad, lambda i: f"Usage {text.iloc[i]!r} is not one of {', '.join(OFFICIAL_SPLITS)}")
        )
    counts = np.bincount(codes, minlength=len(OFFICIAL_SPLITS))
    empty = [name for name, c in zip(OFFICIAL_SPLITS, counts) if c == 0]
    if empty:
        raise UserError(
            f"{path}: split {', '.join(empty)} has no rows; "
            "a FER2013 CSV needs Training, PublicTest and PrivateTest rows"
        )
    return codes


def _labelled_test_csv_beside(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    test = path.with_name("test.csv")
    if path.name != "train.csv" or not test.is_file():
        return None
    frame, _ = _read_csv_frame(test)
    if "emotion" not in frame.columns:
        return None  # Kaggle's test.csv carries no labels
    return _parse_pixels(test, frame["pixels"]), _parse_labels(test, frame["emotion"])


def _with_held_out_validation(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    source: str,
    test: tuple[np.ndarray, np.ndarray] | None,
    note: str,
) -> FerData:
    """Split ``images`` into Training + a stratified, seeded Validation; append a merged Test."""
    rng = np.random.default_rng(0)
    usage = np.zeros(len(labels), dtype=np.int8)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        take = rng.choice(rows, size=max(1, int(round(len(rows) * HELD_OUT_FRACTION))), replace=False)
        usage[take] = 1
    split_names: tuple[str, ...] = ("Training", HELD_OUT_VALIDATION)
    roles = {"train": "Training", "val": HELD_OUT_VALIDATION}
    notes = [note]
    if test is not None:
        test_images, test_labels = test
        images = np.concatenate([images, test_images])
        labels = np.concatenate([labels, test_labels])
        usage = np.concatenate([usage, np.full(len(test_labels), 2, dtype=np.int8)])
        split_names += ("Test",)
        roles["test"] = "Test"
        notes.append("Test merges FER2013's PublicTest and PrivateTest (the split is lost in this layout)")
    else:
        notes.append("no labelled test split: final PrivateTest scoring is not possible with this layout")
    return FerData(images, labels, usage, split_names, roles, source, tuple(notes))
