"""Read the Markdown tables of fer-tune's reports back as rows of cells (tests only)."""

from __future__ import annotations

import re


def table_rows(text: str) -> list[list[str]]:
    """Every row of every Markdown table in ``text`` (header rows included, separators left out), each as
    its stripped cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", line):
            rows.append([cell.strip() for cell in line.strip()[1:-1].split("|")])
    return rows
