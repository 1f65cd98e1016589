"""The manifest a search writes into its folder (``manifest.yaml``): what it searched, how, and
with which versions. The retraining and the report read it instead of re-parsing comments, and its
presence is how fer-tune recognises a folder it made itself."""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from fer_tune.errors import UserError
from fer_tune.yaml_files import read_yaml, write_yaml

MANIFEST = "manifest.yaml"
KIND = "fer-tune search"


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("fer-tune", "torch", "ray", "optuna", "timm", "transformers", "ranger21"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass
class SearchManifest:
    """One search's identity; written when its folder is made, updated when it ends."""

    name: str
    space: str  # the search-space file
    model: str
    base: str | None
    metric: str
    mode: str
    smoke: bool
    seed: int
    budget: dict[str, Any]
    finetune: dict[str, Any] = field(default_factory=dict)
    base_source: str | None = None
    pretrained: str | None = None
    data: str | None = None
    gpus_per_trial: float | None = None  # the GPU share each trial had
    max_concurrent: int | None = None  # trials at once when the search started (max_concurrent auto: the cluster's)
    storage: str | None = None  # where Ray Tune keeps the trials (--storage); None: this folder
    failed_trials: int | None = None  # trials that ended in error (results incomplete when above 0)
    sampler: dict[str, Any] = field(default_factory=dict)  # Optuna's sampler and its settings
    space_hash: str | None = None  # what the trials sample and train (search/continuation.py); None: older
    data_md5: str | None = None  # the data file's content md5; None: a folder layout, or an older fer-tune
    kind: str = KIND
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    versions: dict[str, str] = field(default_factory=_versions)

    def write(self, folder: Path) -> Path:
        """``folder/manifest.yaml``, atomically."""
        return write_yaml(
            folder / MANIFEST,
            dataclasses.asdict(self),
            header="# written by fer-tune's search: what this folder holds; do not edit\n",
        )


def read_manifest(folder: Path) -> SearchManifest | None:
    """The manifest of ``folder``; None where there is none (a folder fer-tune's search did not make)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    values = read_yaml(path)
    known = {f.name for f in dataclasses.fields(SearchManifest)}
    if not isinstance(values, dict) or values.get("kind") != KIND or not {"name", "space", "model"} <= set(values):
        raise UserError(f"{path}: not a fer-tune search manifest; was it edited? restore it or start over with --fresh")
    for key, value in values.items():
        if key in known and not _fits(value, MANIFEST_TYPES[key]):
            raise UserError(
                f"{path}: {key} = {value!r} is not what fer-tune writes there ({_describe(MANIFEST_TYPES[key])}); the "
                "manifest was edited: restore it, or start over with --fresh"
            )
    return SearchManifest(**{k: v for k, v in values.items() if k in known})


MANIFEST_TYPES = typing.get_type_hints(SearchManifest)


def _fits(value: Any, hint: Any) -> bool:
    """``value`` (read from YAML) is of the type ``hint`` names (str, bool, int, float, dict, ``X | None``)."""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(hint) or hint)


def _describe(hint: Any) -> str:
    """``hint`` in words: "a mapping", "text or nothing", ..."""
    words = {str: "text", bool: "true or false", int: "a whole number", float: "a number", dict: "a mapping"}
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    said = [words.get(typing.get_origin(a) or a, str(a)) for a in args if a is not type(None)]
    return " or ".join(said) + (" or nothing" if type(None) in args else "")
