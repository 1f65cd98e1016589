"""The package's shape: rooms by job whose imports point one way, modules of a readable size, and
libraries' private names only in ``compat.py``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fer_tune"
# each room and the rooms it may import; the bottom layer (fer_tune/*.py but cli and pipeline) may
# import only itself, every room may import it; cli and pipeline sit on top and may import anything
MAY_IMPORT = {
    "bottom": set(),
    "data": set(),
    "models": set(),
    "training": {"data", "models"},
    "search": {"data", "models", "training"},
    "reporting": {"data", "models", "training"},
    "deploy": {"data", "models", "training"},
}
TOP = {"cli", "cli_options", "pipeline"}
MAX_LINES = 350


def _room(module: str) -> str:
    """``fer_tune.search.runner`` -> ``search``; ``fer_tune.files`` -> ``bottom``; cli / pipeline -> top."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__",):
        return "bottom"
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "top" if parts[1] in TOP else "bottom"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out[".".join(p for p in rel.parts if p != "__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fer_tune"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fer_tune")}
    return found


def test_imports_point_down_never_up_or_sideways():
    wrong = []
    for module, path in _modules().items():
        here = _room(module)
        if here == "top":
            continue
        for target in _imports(path):
            there = _room(target)
            if there == "top" or (there not in (here, "bottom") and there not in MAY_IMPORT[here]):
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_no_module_over_350_lines():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_private_names_of_libraries_only_in_compat():
    """No ``ray._private``, no ``exec(``, no private attribute of a library object outside compat.py."""
    pattern = re.compile(r"\bray\._private|\bexec\(|\._ot_|\._space\b|\._metric\b|\._mode\b")
    offenders = [
        f"{m}: {line.strip()}"
        for m, p in _modules().items()
        if not m.endswith("compat")
        for line in p.read_text().splitlines()
        if pattern.search(line) and not line.strip().startswith("#")
    ]
    assert not offenders, "\n".join(offenders)
