"""Markdown tables of fer-tune's reports: pandas' ``to_markdown`` (tabulate) over cells already
formatted as the report shows them, so a figure's precision is chosen where the figure is made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd


def markdown_table(rows: pd.DataFrame | Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table: one row per mapping (or the frame's rows), ``columns`` in that order."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=columns)
    if columns is not None:
        frame = frame[list(columns)]
    return frame.astype(str).to_markdown(index=False, tablefmt="github", disable_numparse=True)
