"""fer-tune's console: one logger (``fer_tune``, each module a child by its name) whose lines are the
message alone on standard output, as a user reads them; the CLI sets it up, a library user may not."""

from __future__ import annotations

import logging
import sys

LOGGER = "fer_tune"


class ConsoleHandler(logging.StreamHandler):
    """fer-tune's lines on the standard output of the moment (a redirect or pytest's capture)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        """The stream is always the current ``sys.stdout``; ``StreamHandler`` sets one at creation."""


def configure_console(level: int = logging.INFO) -> None:
    """Show fer-tune's lines (at ``level`` and above) on the console, once however often it is called."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        handler = ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
