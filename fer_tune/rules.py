"""The one mechanism for checked settings: a :class:`Rule` says what a value may be and checks it,
whether the value comes from a YAML field, a training config or a command-line option."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fer_tune.errors import UserError


@dataclass(frozen=True)
class Rule:
    """What a setting may be (``allowed``, as the message says it) and the check (``ok``)."""

    allowed: str
    ok: Callable[[Any], bool]

    def refuse(self, subject: str, value: Any) -> None:
        """A :class:`UserError` "``subject`` is not allowed; use ``allowed``" unless ``value`` passes."""
        if not self.ok(value):
            raise UserError(f"{subject} is not allowed; use {self.allowed}")


def whole(low: int, high: int, what: str = "a whole number") -> Rule:
    """A whole number from ``low`` to ``high`` (both included)."""
    return Rule(f"{what} {low} to {high}".strip(), lambda v: low <= v <= high)


def one_of(names: tuple[str, ...] | list[str]) -> Rule:
    """One of ``names``."""
    return Rule(f"one of {', '.join(names)}", lambda v: v in names)


def check_fields(rules: Mapping[str, Rule], values: Any, subject: Callable[[str, Any], str]) -> None:
    """Every attribute of ``values`` that ``rules`` names, in the rules' order; the first that fails is a
    :class:`UserError` whose subject is ``subject(name, value)``."""
    for name, rule in rules.items():
        value = getattr(values, name)
        rule.refuse(subject(name, value), value)
