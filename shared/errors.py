"""Errors meant for users: they say what was expected, what was found and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ZeusError(Exception):
    """A problem with the user's input or set-up; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset: which case, which file, what is wrong."""

    case_id: str
    message: str
    file: Path | None = None

    def __str__(self) -> str:
        where = f" [{self.file}]" if self.file else ""
        return f"{self.case_id}: {self.message}{where}"


class DataError(ZeusError):
    """One or more problems in a dataset's files."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def single(cls, case_id: str, message: str, file: Path | None = None) -> DataError:
        return cls([Problem(case_id, message, file)])
