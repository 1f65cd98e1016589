"""YAML files: read with ``yaml.safe_load`` only (a key given twice, a syntax error: one :class:`UserError`
naming the file and line), written atomically in plain types."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from fer_tune.errors import UserError
from fer_tune.files import write_text_atomic


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (the last would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UserError(f"{self.name}: key {key!r} appears twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` of a file, with a :class:`UserError` naming the file and line on failure."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1} column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: YAML syntax error ({problem}); fix the file") from None
    finally:
        loader.dispose()


def yaml_plain(values: Any) -> Any:
    """``values`` in plain YAML types: numpy scalars become Python numbers, tuples lists (so that a
    value read from a CSV or computed compares equal to the same value read back from YAML)."""
    if isinstance(values, dict):
        return {key: yaml_plain(value) for key, value in values.items()}
    if isinstance(values, (list, tuple)):
        return [yaml_plain(value) for value in values]
    if type(values).__module__ == "numpy" and hasattr(values, "item"):
        return values.item()
    return values


def write_yaml(path: str | os.PathLike, values: Any, header: str = "") -> Path:
    """Write plain data as YAML (atomic: temp file + rename)."""
    return write_text_atomic(path, header + yaml.safe_dump(values, sort_keys=False))
