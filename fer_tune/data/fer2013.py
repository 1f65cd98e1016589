"""FER2013 in its common layouts -> validated uint8 arrays, with an on-disk cache.

Layouts read:
- the Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``) and ``icml_face_data.csv``
  (``emotion, Usage, pixels`` with leading spaces): the three official splits;
- the Kaggle ``train.csv`` (``emotion,pixels``, no Usage): Training only, a validation split is
  held out of it; a ``test.csv`` beside it is used only if it has labels;
- an image folder ``train/<emotion>/*.png|jpg`` + ``test/<emotion>/*``: its ``test/`` merges
  PublicTest and PrivateTest, so validation is held out of ``train/`` instead.

Every problem stops with a :class:`UserError` naming the file, the row (or image) and the fix.
Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import lzma
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fer_tune import EMOTIONS
from fer_tune.errors import UserError
from fer_tune.files import cache_dir, write_bytes_atomic

OFFICIAL_SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
CANONICAL_MD5 = "f8428a1edbd21e88f42c73edd2a14f95"
IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
CACHE_VERSION = 2
HELD_OUT_VALIDATION = "Validation"
HELD_OUT_FRACTION = 0.1
_PIXELS_PATTERN = r"\d{1,3}(?: \d{1,3})*"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass(frozen=True)
class FerData:
    """A whole FER2013-style data set held in memory.

    ``roles`` maps ``train`` / ``val`` / ``test`` to a split name (``test`` may be missing);
    ``val`` is what a search selects on, ``test`` is read only by the final scoring step.
    """

    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,)
    usage: np.ndarray  # int8 (N,), index into split_names
    split_names: tuple[str, ...]
    roles: dict[str, str]
    source: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split, by its name (e.g. ``PublicTest``)."""
        if name not in self.split_names:
            raise UserError(
                f"{self.source}: no split named {name!r}; this data has {', '.join(self.split_names)}"
            )
        mask = self.usage == self.split_names.index(name)
        return self.images[mask], self.labels[mask]

    def role(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels for ``train``, ``val`` or ``test``."""
        if role not in self.roles:
            raise UserError(
                f"{self.source}: this data has no labelled {role} split "
                f"({'; '.join(self.notes) or 'see `launch.py data`'}); use the Kaggle fer2013.csv"
            )
        images, labels = self.split(self.roles[role])
        if role in ("train", "val") and len(labels) == 0:
            raise UserError(
                f"{self.source}: the {role} split ({self.roles[role]}) has no rows, so nothing can be "
                f"{'trained' if role == 'train' else 'validated'}; give a file with more rows per class"
            )
        return images, labels

    def split_sizes(self) -> dict[str, int]:
        """Rows per split, in split order."""
        counts = np.bincount(self.usage, minlength=len(self.split_names))
        return {name: int(c) for name, c in zip(self.split_names, counts)}


def load_fer(path: str | os.PathLike, *, use_cache: bool = True) -> FerData:
    """Load FER2013 from a CSV file, a folder with ``train/`` + ``test/`` images, or a folder
    holding ``fer2013.csv`` / ``icml_face_data.csv`` / ``train.csv``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; give the path of fer2013.csv (or an image folder)")
    if path.is_dir():
        for name in ("fer2013.csv", "icml_face_data.csv", "train.csv"):
            if (path / name).is_file():
                return load_fer(path / name, use_cache=use_cache)
        if (path / "train").is_dir():
            return _cached(path, _read_image_folder, use_cache)
        raise UserError(
            f"{path}: folder holds neither fer2013.csv, icml_face_data.csv, train.csv "
            "nor train/<emotion>/ images; point --data at the CSV file"
        )
    if path.name.lower().endswith(COMPACT_SUFFIX):
        return read_compact(path)
    return _cached(path, _read_csv_layout, use_cache)


# ---------------------------------------------------------------- compact form

COMPACT_SUFFIX = ".npz.xz"
COMPACT_FORMAT = "fer-tune compact 1"


def write_compact(data: FerData, path: Path, splits: tuple[str, ...], source_md5: str) -> None:
    """``data``'s ``splits`` as one xz-compressed ``.npz`` (uint8 pixels, labels, split codes), atomically:
    a data set small enough to travel. Roles whose split is left out are dropped."""
    keep = np.isin(data.usage, [data.split_names.index(name) for name in splits])
    codes = {data.split_names.index(name): i for i, name in enumerate(splits)}
    usage = np.array([codes[int(u)] for u in data.usage[keep]], dtype=np.int8)
    roles = {role: name for role, name in data.roles.items() if name in splits}
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(COMPACT_FORMAT), images=data.images[keep], labels=data.labels[keep],
             usage=usage, split_names=np.array(splits), roles=np.array(json.dumps(roles)),
             source=np.array(Path(data.source).name), source_md5=np.array(source_md5))
    write_bytes_atomic(path, lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def read_compact(path: Path) -> FerData:
    """A file :func:`write_compact` wrote."""
    try:
        with lzma.open(path, "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            if str(z["format"]) != COMPACT_FORMAT:
                raise ValueError(f"format {str(z['format'])!r}")
            fields = {key: z[key] for key in ("images", "labels", "usage", "split_names", "roles", "source", "source_md5")}
    except (OSError, EOFError, lzma.LZMAError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: not a fer-tune compact data file ({exc}); re-create it with "
                        "python bench/device_kit.py, or give the FER2013 CSV") from None
    names, md5 = tuple(str(s) for s in fields["split_names"]), str(fields["source_md5"])
    return FerData(images=fields["images"], labels=fields["labels"].astype(np.int64), usage=fields["usage"],
                   split_names=names, roles=json.loads(str(fields["roles"])), source=str(path),
                   notes=(f"compact form of {fields['source']} (md5 {md5}"
                          f"{': the canonical Kaggle fer2013.csv' if md5 == CANONICAL_MD5 else ''}), splits "
                          f"{', '.join(names)} only",))


# ---------------------------------------------------------------- cache


def cache_path_for(path: Path) -> Path:
    """Where the parsed arrays of ``path`` are cached: beside it, or in ~/.cache if read-only."""
    beside = path.with_name(path.name + ".fer-tune.npz")
    # a folder without write bits is read-only even for root (who os.access says may write anywhere)
    if os.access(path.parent, os.W_OK) and path.parent.stat().st_mode & 0o222:
        return beside
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / f"{digest}.npz"


def _fingerprint(path: Path) -> str:
    """Changes whenever the source file (or any file of an image folder) changes."""
    if path.is_file():
        st = path.stat()
        parts = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    else:
        parts = [str(path.resolve())]
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".npz")):
            st = file.stat()
            parts += [str(file.relative_to(path)), st.st_size, st.st_mtime_ns]
    return json.dumps([CACHE_VERSION, *parts])


def _cached(path: Path, reader, use_cache: bool) -> FerData:
    cache = cache_path_for(path)
    key = _fingerprint(path)
    if use_cache and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return FerData(
                        images=z["images"],
                        labels=z["labels"],
                        usage=z["usage"],
                        split_names=tuple(str(s) for s in z["split_names"]),
                        roles=json.loads(str(z["roles"])),
                        source=str(path),
                        notes=tuple(str(s) for s in z["notes"]),
                    )
        except (OSError, ValueError, KeyError):
            pass  # a stale or damaged cache is rebuilt below
    data = reader(path)
    if use_cache:
        _write_cache(cache, key, data)
    return data


def _write_cache(cache: Path, key: str, data: FerData) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                key=np.array(key),
                images=data.images,
                labels=data.labels,
                usage=data.usage,
                split_names=np.array(data.split_names),
                roles=np.array(json.dumps(data.roles)),
                notes=np.array(data.notes, dtype=str),
            )
        os.replace(tmp, cache)
    except OSError:
        pass  # caching is an optimisation; a read-only disk only costs a slower next load


# ---------------------------------------------------------------- CSV


def _read_csv_layout(path: Path) -> FerData:
    frame = _read_csv_frame(path)
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


def content_md5(path: Path) -> str:
    """MD5 of a file's content, decompressed when its suffix names a compression (so ``fer2013.csv.xz``
    has the md5 of the CSV it holds), read in 8 MiB chunks."""
    digest = hashlib.md5()
    with _open_binary(path) as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_csv_frame(path: Path) -> pd.DataFrame:
    try:
        with _open_binary(path) as f:
            head = f.read(4096)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"{path}: cannot be read ({reason}); check the path, its permissions and its compression") from None
    if not head.strip():
        raise UserError(f"{path}: the file is empty; give the FER2013 CSV (header emotion,pixels,Usage)")
    if b"\x00" in head:
        raise UserError(f"{path}: this is a binary file, not a CSV; give the FER2013 CSV (header emotion,pixels,Usage)")
    try:
        # header=None: a row with more fields than the header is an error, not a silent index column
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, header=None)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV (bytes that are not UTF-8); give the FER2013 CSV") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: malformed CSV ({exc}); every row must be emotion,pixels,Usage") from None
    frame.columns = [str(c).strip() for c in frame.iloc[0]]
    repeated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise UserError(f"{path}: column {repeated[0]!r} appears more than once in the header; "
                        "a FER2013 CSV has the header emotion,pixels,Usage")
    return frame.iloc[1:].reset_index(drop=True)


def _bad_rows_message(path: Path, bad: np.ndarray, describe) -> str:
    first = int(bad[0])
    more = f" ({len(bad) - 1} more bad rows after it)" if len(bad) > 1 else ""
    return f"{path} line {first + 2} (data row {first + 1}): {describe(first)}{more}; fix or remove that row"


def _parse_pixels(path: Path, pixels: pd.Series) -> np.ndarray:
    """Vectorised parse of the pixel strings into uint8 (N, 48, 48); no per-row Python loop."""
    text = pixels.str.strip()
    digits_and_spaces = text.str.fullmatch(_PIXELS_PATTERN).to_numpy(dtype=bool)
    if not digits_and_spaces.all():
        raise UserError(_bad_rows_message(path, np.flatnonzero(~digits_and_spaces),
                                          lambda i: _pixel_problem(text.iloc[i])))
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
            _bad_rows_message(
                path, bad, lambda i: f"Usage {text.iloc[i]!r} is not one of {', '.join(OFFICIAL_SPLITS)}"
            )
        )
    counts = np.bincount(codes, minlength=len(OFFICIAL_SPLITS))
    empty = [name for name, c in zip(OFFICIAL_SPLITS, counts) if c == 0]
    if empty:
        raise UserError(
            f"{path}: split {', '.join(empty)} has no rows; a FER2013 CSV needs Training, PublicTest and PrivateTest rows"
        )
    return codes


def _labelled_test_csv_beside(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    test = path.with_name("test.csv")
    if path.name != "train.csv" or not test.is_file():
        return None
    frame = _read_csv_frame(test)
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


# ---------------------------------------------------------------- image folder


def _read_image_folder(root: Path) -> FerData:
    skipped: list[str] = []
    train = _read_image_split(root / "train", skipped)
    test = _read_image_split(root / "test", skipped) if (root / "test").is_dir() else None
    data = _with_held_out_validation(
        *train,
        source=str(root),
        test=test,
        note=f"image folder: {HELD_OUT_VALIDATION} is a seeded, stratified {HELD_OUT_FRACTION:.0%} held out of train/",
    )
    if skipped:
        names = ", ".join(str(Path(p).relative_to(root)) for p in skipped[:3])
        data = replace(data, notes=data.notes + (
            f"not read: {len(skipped)} entries that are not images directly in <split>/<emotion>/ "
            f"(e.g. {names}); move them there or remove them",))
    return data


def _read_image_split(folder: Path, skipped: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``folder/<emotion>/``; entries it does not read are added to ``skipped``."""
    from PIL import Image, UnidentifiedImageError

    skipped.extend(str(p) for p in sorted(folder.iterdir()) if not p.is_dir())
    unknown = [d.name for d in folder.iterdir() if d.is_dir() and d.name.lower() not in EMOTIONS]
    if unknown:
        raise UserError(f"{folder}: unknown emotion folder(s) {', '.join(sorted(unknown))}; allowed: {', '.join(EMOTIONS)}")
    images, labels = [], []
    for label, emotion in enumerate(EMOTIONS):
        candidates = [d for d in folder.iterdir() if d.is_dir() and d.name.lower() == emotion]
        for directory in candidates:
            for file in sorted(directory.iterdir()):
                if file.is_dir() or file.suffix.lower() not in _IMAGE_SUFFIXES:
                    skipped.append(str(file))
                    continue
                try:
                    with Image.open(file) as img:
                        array = np.asarray(img.convert("L"), dtype=np.uint8)
                except (UnidentifiedImageError, OSError) as exc:
                    raise UserError(f"{file}: unreadable image ({exc}); replace or delete it") from None
                if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
                    raise UserError(f"{file}: image is {array.shape[1]}x{array.shape[0]}, expected 48x48")
                images.append(array)
                labels.append(label)
    if not images:
        raise UserError(f"{folder}: no images found; expected {folder}/<emotion>/*.png or *.jpg")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


# ------------------------------------------------------------------ the same image in two splits


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """A group id per image: pixel-identical images share an id."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    rows = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, group = np.unique(rows, return_inverse=True)
    return group.ravel()


def rows_with_copy_in(
    data: FerData, split: str, reference: str = "Training", group: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask over ``split``'s rows: True where the exact pixels also occur in ``reference``.
    ``group`` (from :func:`duplicate_groups`) saves recomputing it for several splits."""
    group = duplicate_groups(data.images) if group is None else group
    ref_code = data.split_names.index(reference)
    code = data.split_names.index(split)
    in_reference = np.zeros(group.max() + 1, dtype=bool)
    in_reference[group[data.usage == ref_code]] = True
    return in_reference[group[data.usage == code]]


def rows_seen_in_training(data: FerData, protocol: str) -> np.ndarray:
    """Test rows whose exact pixels occur in data the scored models trained on: Training, and under
    ``trainval`` PublicTest too (it is training data there)."""
    test_split = data.roles["test"]
    seen = rows_with_copy_in(data, test_split, data.roles["train"])
    if protocol == "trainval":
        seen = seen | rows_with_copy_in(data, test_split, data.roles["val"])
    return seen
