"""YAML files: read with ``yaml.safe_load`` only (a key given twice, a syntax error: one :class:`UserError`
naming the file and line), written atomically in plain types."""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from fer_tune.errors import UserError
from fer_tune.files import write_text_atomic

MAX_EXPANDED_NODES = 100_000  # a search space has a few hundred; an alias bomb expands to billions
MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (the last would silently win) and
    a key that is not a plain value; merge keys (``<<: *defaults``) work as YAML defines them."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # merged keys may be overridden by the mapping's own keys, as YAML says
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                raise UserError(
                    f"{self.name} line {line}: a key must be a plain name or number, not a {type(key).__name__}"
                )
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
    try:
        loader = _UniqueKeyLoader(text)  # refuses control characters at once
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not YAML text ({str(exc).splitlines()[0]}); fix the file") from None
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise UserError(
                f"{path}: its aliases expand to more than {MAX_EXPANDED_NODES} values (an alias bomb?); "
                "write the values out, or use fewer nested aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1} column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: YAML syntax error ({problem}); fix the file") from None
    except RecursionError:
        raise UserError(
            f"{path}: nested too deeply to read (a search space needs a few levels); flatten the file"
        ) from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is written out (each node counted once, so a
    billion-laughs document is measured without being expanded)."""
    if id(node) not in sizes:
        sizes[id(node)] = 1  # a node that refers to itself counts once
        children = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        sizes[id(node)] = min(1 + sum(_expanded_size(child, sizes) for child in children), 2 * MAX_EXPANDED_NODES)
    return sizes[id(node)]


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
