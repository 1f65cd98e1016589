"""``launch.py data PATH``: describe a FER2013 file for a person (splits x classes, blanks, duplicates)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_tune import EMOTIONS
from fer_tune.data.compact import COMPACT_SUFFIX
from fer_tune.data.fer2013 import file_md5
from fer_tune.data.fer_data import CANONICAL_MD5, FerData
from fer_tune.data.leakage import duplicate_groups, rows_with_copy_in
from fer_tune.markdown import markdown_table

DEMO_DATA = "demo faces, not FER2013"


def figure_note(demo: bool) -> str:
    """What the title of every figure of a run on ``demo`` data says ("" for any other data)."""
    return DEMO_DATA if demo else ""


def data_identity(source: str | None, demo: bool) -> tuple[str, bool]:
    """(the sentence that leads a report about results on ``source``, whether they compare with published
    FER2013 figures): FER2013 named by its md5; ``demo`` (a smoke run's data) or any other file is not
    comparable."""
    path = Path(source) if source else None
    md5 = file_md5(path) if path is not None and path.is_file() else None
    if md5 == CANONICAL_MD5:
        return f"**Data: FER2013** (`{source}`, md5 {md5}: the canonical Kaggle fer2013.csv).", True
    named = f"`{source}`" + (f", md5 {md5}" if md5 else "")
    if demo:
        return f"**Data: {DEMO_DATA}: not comparable with the paper** ({named}).", False
    return (
        f"**Data: not the canonical FER2013 file** ({named}; the canonical Kaggle fer2013.csv has md5 "
        f"{CANONICAL_MD5}): **not comparable with the paper**.",
        False,
    )


def describe(data: FerData) -> str:
    """A Markdown description of ``data``."""
    lines = [f"# {data.source}", ""]
    source = Path(data.source)
    if source.is_file() and not source.name.lower().endswith(COMPACT_SUFFIX):  # a compact file's note names its source
        md5 = data.content_md5 or file_md5(source)
        verdict = "the canonical Kaggle fer2013.csv" if md5 == CANONICAL_MD5 else "NOT the canonical Kaggle fer2013.csv"
        lines += [f"md5 {md5}: {verdict} (canonical md5 {CANONICAL_MD5})", ""]
    for note in data.notes:
        lines.append(f"note: {note}")
    lines += [f"roles: {', '.join(f'{k} = {v}' for k, v in data.roles.items())}", ""]

    splits = [(name, data.labels[data.usage == code]) for code, name in enumerate(data.split_names)]
    rows = []
    for name, labels in [*splits, ("all", data.labels)]:
        counts = np.bincount(labels, minlength=len(EMOTIONS))
        rows.append({"split": name, **dict(zip(EMOTIONS, counts.tolist())), "total": int(counts.sum())})
    lines += [markdown_table(rows), ""]

    flat = data.images.reshape(len(data.images), -1)
    blank = flat.max(axis=1) == 0
    flat_std = flat.std(axis=1) < 5
    lines.append(
        f"all-black images: {int(blank.sum())} "
        + "("
        + ", ".join(f"{n} {int(blank[data.usage == c].sum())}" for c, n in enumerate(data.split_names))
        + ")"
    )
    lines.append(f"near-uniform images (pixel std < 5): {int(flat_std.sum())}")

    group = duplicate_groups(data.images)
    sizes = np.bincount(group)
    dup_groups = np.flatnonzero(sizes > 1)
    in_dup = sizes[group] > 1
    spans, conflicts = 0, 0
    if len(dup_groups):
        order = np.argsort(group[in_dup], kind="stable")
        g = group[in_dup][order]
        u = data.usage[in_dup][order]
        y = data.labels[in_dup][order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        spans = int((np.maximum.reduceat(u, starts) != np.minimum.reduceat(u, starts)).sum())
        conflicts = int((np.maximum.reduceat(y, starts) != np.minimum.reduceat(y, starts)).sum())
    lines += [
        f"exact duplicate groups: {len(dup_groups)} covering {int(in_dup.sum())} rows; "
        f"{spans} groups span more than one split, {conflicts} carry conflicting labels",
    ]
    if "Training" in data.split_names:
        for name in data.split_names:
            if name != "Training":
                leaked = rows_with_copy_in(data, name, group=group)
                lines.append(
                    f"{name} rows whose exact pixels also appear in Training: {int(leaked.sum())} of {len(leaked)}"
                )
    return "\n".join(lines) + "\n"
