"""Load FER2013 in any layout fer-tune reads (CSV, image folder, compact), with an on-disk cache of the
parsed arrays beside the file (or under ``~/.cache/fer-tune``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from fer_tune.data.compact import COMPACT_SUFFIX, read_compact
from fer_tune.data.csv_layout import _read_csv_layout, content_md5
from fer_tune.data.fer_data import CACHE_VERSION, FerData
from fer_tune.data.image_folder import _read_image_folder
from fer_tune.errors import UserError, os_cause
from fer_tune.files import cache_dir, write_atomic

log = logging.getLogger(__name__)


def load_fer(path: str | os.PathLike, *, use_cache: bool = True) -> FerData:
    """Load FER2013 from a CSV file, a folder with ``train/`` + ``test/`` images, or a folder
    holding ``fer2013.csv`` / ``icml_face_data.csv`` / ``train.csv``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; give the path of fer2013.csv (or an image folder)")
    if not (path.is_file() or path.is_dir()):  # a FIFO or a device would block or never end
        raise UserError(f"{path}: is a special file (a FIFO or device), not a data file; give fer2013.csv")
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


def load_run_data(path: str | os.PathLike | None, smoke: bool) -> FerData:
    """The data a search or train run uses: ``path``, else under ``smoke`` the built-in demo faces; its
    notes logged, and its train and validation splits checked to hold rows before anything starts."""
    from fer_tune.data.demo import SMOKE_DEMO, default_demo_csv

    if path:
        data = load_fer(path)
    elif smoke:
        demo = default_demo_csv(SMOKE_DEMO)
        log.info(f"data: built-in demo faces (not FER2013) from {demo}")
        data = load_fer(demo)
    else:
        raise UserError("no data given: pass --data PATH/TO/fer2013.csv, or --smoke for the built-in demo data")
    for note in data.notes:
        log.info(f"note: {note}")
    data.role("train"), data.role("val")
    return data


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
    if use_cache:
        z = _read_cache(cache)
        if z is not None and z.get("key") == key:
            return FerData(
                images=z["images"],
                labels=z["labels"],
                usage=z["usage"],
                split_names=tuple(str(s) for s in z["split_names"]),
                roles=json.loads(str(z["roles"])),
                source=str(path),
                notes=tuple(str(s) for s in z["notes"]),
                content_md5=str(z.get("md5", "")),
            )
    data = reader(path)
    if use_cache:
        _write_cache(cache, key, data)
    return data


def _read_cache(cache: Path) -> dict | None:
    """The arrays of the cache file ``cache``; None when there is none, or it is not one fer-tune wrote
    whole (truncated, a folder, junk: a line says so, and the data are read again)."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        arrays = {name: str(a) if a.ndim == 0 and a.dtype.kind == "U" else a for name, a in arrays.items()}
        if not isinstance(arrays.get("key"), str):
            raise KeyError("key")
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.info(f"note: {cache}: a damaged cache ({type(exc).__name__}); reading the data file again")
        return None


def file_md5(path: Path) -> str:
    """The md5 of a data file's (decompressed) content: the one the loader hashed while it read the file,
    from its cache when that is fresh, else read again."""
    z = _read_cache(cache_path_for(path))
    if z is not None and z.get("key") == _fingerprint(path) and z.get("md5"):
        return str(z["md5"])
    return content_md5(path)


def _write_cache(cache: Path, key: str, data: FerData) -> None:
    """Cache ``data``'s arrays under ``key``, atomically; a cache that cannot be written (read-only, full,
    a folder in its place) is skipped, leaving no temporary file: it only costs a slower next load."""
    arrays = dict(
        key=np.array(key),
        images=data.images,
        labels=data.labels,
        usage=data.usage,
        split_names=np.array(data.split_names),
        roles=np.array(json.dumps(data.roles)),
        notes=np.array(data.notes, dtype=str),
        md5=np.array(data.content_md5),
    )

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        write_atomic(cache, write)
    except OSError as exc:
        log.debug(f"{cache}: not cached ({os_cause(exc)})")
