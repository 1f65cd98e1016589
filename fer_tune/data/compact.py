"""FER2013 in fer-tune's compact form: one xz-compressed ``.npz`` of uint8 pixels, labels and split codes
(what travels to a GPU machine; ``bench/device_kit.py`` writes it)."""

from __future__ import annotations

import io
import json
import lzma
from pathlib import Path

import numpy as np

from fer_tune.data.fer_data import CANONICAL_MD5, FerData
from fer_tune.errors import UserError
from fer_tune.files import write_bytes_atomic

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
    np.savez(
        buffer,
        format=np.array(COMPACT_FORMAT),
        images=data.images[keep],
        labels=data.labels[keep],
        usage=usage,
        split_names=np.array(splits),
        roles=np.array(json.dumps(roles)),
        source=np.array(Path(data.source).name),
        source_md5=np.array(source_md5),
    )
    write_bytes_atomic(path, lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def read_compact(path: Path) -> FerData:
    """A file :func:`write_compact` wrote."""
    try:
        with lzma.open(path, "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            if str(z["format"]) != COMPACT_FORMAT:
                raise ValueError(f"format {str(z['format'])!r}")
            fields = {
                key: z[key] for key in ("images", "labels", "usage", "split_names", "roles", "source", "source_md5")
            }
    except (OSError, EOFError, lzma.LZMAError, ValueError, KeyError) as exc:
        raise UserError(
            f"{path}: not a fer-tune compact data file ({exc}); re-create it with "
            "python bench/device_kit.py, or give the FER2013 CSV"
        ) from None
    names, md5 = tuple(str(s) for s in fields["split_names"]), str(fields["source_md5"])
    return FerData(
        images=fields["images"],
        labels=fields["labels"].astype(np.int64),
        usage=fields["usage"],
        split_names=names,
        roles=json.loads(str(fields["roles"])),
        source=str(path),
        notes=(
            f"compact form of {fields['source']} (md5 {md5}"
            f"{': the canonical Kaggle fer2013.csv' if md5 == CANONICAL_MD5 else ''}), splits "
            f"{', '.join(names)} only",
        ),
    )
