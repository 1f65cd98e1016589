"""SIGTERM (``kill``, a batch scheduler's stop, ``docker stop``) is a Ctrl-C: every stage stops as it
does on Ctrl-C (Ray Tune saves its state, a stage's result files are written whole or not at all) and
the same command continues. Without this, Ray's handler prints a crash report and exits at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _ctrl_c_instead(signum: int, frame: Any) -> None:
    if not callable(signal.getsignal(signal.SIGINT)):  # Ctrl-C ignored (`nohup`, `cmd &` in a script)
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)  # whichever Ctrl-C handler is current takes it from here


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # the only thread that may set handlers


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside, SIGTERM is a Ctrl-C; on leaving, the handler from before is back."""
    if not _in_main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _ctrl_c_instead)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


@contextmanager
def sigterm_kept_across() -> Iterator[None]:
    """Around a call that sets its own SIGTERM handler (``ray.init``): inside :func:`sigterm_as_ctrl_c`,
    SIGTERM is a Ctrl-C again after it."""
    ours = _in_main_thread() and signal.getsignal(signal.SIGTERM) is _ctrl_c_instead
    yield
    if ours:
        signal.signal(signal.SIGTERM, _ctrl_c_instead)
