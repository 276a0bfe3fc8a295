"""Errors a user can cause, as opposed to bugs.

A ``UserError`` is printed as one clear message and ends the command with
exit status 2; nothing else should ever reach the user without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Location:
    """Where in a lab file something was written (1-based line)."""

    file: Path | None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = str(self.file) if self.file else "<input>"
        if self.line:
            where += f":{self.line}"
        if self.field:
            where += f": {self.field}"
        return where


class UserError(Exception):
    """Something the user can fix. ``hint`` says how."""

    exit_code = 2

    def __init__(self, message: str, *, location: Location | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}" if self.location else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class LabFileError(UserError):
    """The lab file is not valid: syntax, schema or meaning."""


class EngineError(UserError):
    """The container engine is missing, unreachable, or refused a request."""


class LabNotFound(UserError):
    """No lab by that name or path."""
