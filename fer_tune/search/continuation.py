"""The manifest is the contract of a search folder: what a continuation (the same ``--search`` again,
``--resume``, ``--retrain``) must agree with before it touches anything. Each mismatch is one
:class:`UserError` naming both values and the fix; a folder an older fer-tune wrote is continued where
it recorded enough to compare, and what it did not record is not compared."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fer_tune.data.fer2013 import file_md5
from fer_tune.data.fer_data import FerData
from fer_tune.errors import UserError
from fer_tune.manifest import SearchManifest
from fer_tune.search.space import SearchSpace
from fer_tune.search_folder import SearchFolder


def space_hash(space: SearchSpace) -> str:
    """A digest of what a search samples and trains (model, sampled parameters, fixed settings, the
    paper's trial, fine-tune stage, metric), as given after presets and overrides; the budget is compared
    field by field instead, so that a message can name the option."""
    content = {
        "model": space.model,
        "metric": space.metric,
        "params": [asdict(p) for p in space.params],
        "fixed": space.fixed,
        "paper_trial": space.paper_trial,
        "finetune": space.finetune,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_md5(data: FerData) -> str | None:
    """The md5 of the data's file content (hashed while it was read), None for a folder layout."""
    source = Path(data.source)
    return data.content_md5 or (file_md5(source) if source.is_file() else None)


def _refuse(folder: Path, what: str, recorded: Any, given: Any, fix: str) -> UserError:
    return UserError(
        f"{folder / SearchFolder.MANIFEST}: this search was made with {what} {recorded}, not {given}; {fix}"
    )


def check_search_continues(folder: Path, old: SearchManifest, space: SearchSpace, data: FerData, name: str) -> None:
    """A search folder's manifest against the search about to continue in it (before anything is written)."""
    version = old.versions.get("fer_tune", "an older fer-tune")
    if old.name != name:
        raise UserError(
            f"{folder / SearchFolder.MANIFEST}: this folder holds search {old.name!r} (Ray's experiment and the "
            f"Optuna study carry that name), so it cannot continue as {name!r}; run it as --name {old.name} where "
            "it was made, or start a new search with --fresh"
        )
    if old.model != space.model:
        raise _refuse(
            folder, "model", old.model, space.model, f"give the space of a {old.model} search, or --fresh to start over"
        )
    if old.space_hash and old.space_hash != space_hash(space):
        raise UserError(
            f"{folder / SearchFolder.MANIFEST}: this search was made with other space settings than "
            f"{space.path} gives now (space digest {old.space_hash}, now {space_hash(space)}: sampled parameters, "
            "fixed settings, paper trial or fine-tune differ); restore the file, or --fresh to start over"
        )
    budget = asdict(space.budget)
    for key, option in (("num_trials", "--trials"), ("max_epochs", "--max-epochs")):
        if key in old.budget and old.budget[key] != budget[key]:
            raise _refuse(
                folder,
                option,
                old.budget[key],
                budget[key],
                f"give {option} {old.budget[key]} to continue it, or --fresh to start over",
            )
    _check_same_data(folder, old, data, f"give --data {old.data}, or --fresh to start over")
    if not old.data_md5 and old.data and old.data != data.source:
        raise _refuse(
            folder,
            "--data",
            old.data,
            data.source,
            f"give --data {old.data} (recorded by fer-tune {version}), or --fresh to start over",
        )


def check_retrain_data(folder: Path, old: SearchManifest, data: FerData) -> None:
    """``--retrain`` scores on the test split of the file the search ran on, and no other."""
    _check_same_data(
        folder,
        old,
        data,
        f"retrain on the data the search ran on: --data {old.data} (its scores are on that file's test split)",
    )


def _check_same_data(folder: Path, old: SearchManifest, data: FerData, fix: str) -> None:
    """The data's md5 against the one the manifest recorded (when both are known)."""
    md5 = data_md5(data)
    if old.data_md5 and md5 and old.data_md5 != md5:
        if old.data and Path(old.data).resolve() == Path(data.source).resolve():  # the very file it records
            raise UserError(
                f"{folder / SearchFolder.MANIFEST}: records data {old.data} with content md5 {old.data_md5}, but that "
                f"file's content is now md5 {md5}: the manifest does not match what it records (edited?) or the file "
                "changed since the search; restore the manifest or put back the file the search ran on, or --fresh "
                "to start over"
            )
        raise _refuse(folder, "data of md5", f"{old.data_md5} ({old.data})", f"{md5} ({data.source})", fix)
