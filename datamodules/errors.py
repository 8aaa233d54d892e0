"""The one error type of the data layer and how its messages are put together.

Kept apart from ``datamodules.base`` (which defines the DataModule base class and so loads
Lightning) because the command line, the registry and the preprocessing that ``mednext predict``
imports must be able to raise and report data problems without loading Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches


class DataError(ValueError):
    """A dataset is missing, incomplete or malformed. The message is complete and meant for the
    user as it is (the command line prints it without a traceback)."""


def problem_report(title: str, problems: Sequence[str]) -> str:
    """One message listing every problem."""
    return "\n".join([f"{title}: {len(problems)} problem(s):", *(f"  - {p}" for p in problems)])


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``name``; ``""`` if none is close."""
    matches = get_close_matches(name, list(choices), n=1)
    return f"; did you mean {matches[0]!r}?" if matches else ""
