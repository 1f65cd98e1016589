"""The time fields of fer-tune's progress lines (search, retraining, predict)."""

from __future__ import annotations

import time


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def stamp(started: float, left: str) -> str:
    """The head of every progress line: time of day, time since ``started`` (monotonic), time left."""
    return f"[{time.strftime('%H:%M:%S')} {clock(time.monotonic() - started)} {left}]"
