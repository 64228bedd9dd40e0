"""One error base for the whole package: every error a user can cause names where (source, field) and what.

`NasZooError(source, field, problem)` renders as ``source: field 'a.b': problem``; the command-line tools print
any `NasZooError` as that one line (no traceback). Each module keeps its own subclass (EntryError, ConfigError,
CostTableError, ...) so callers can catch what they mean.
"""
from __future__ import annotations

__all__ = ["NasZooError"]


class NasZooError(ValueError):
    """A problem with user input or a run: `source` (file, model or run), `field` (dotted key; may be empty),
    `problem` (what was expected)."""

    label = "field"

    def __init__(self, *args: str):
        # (problem) | (source, problem) | (source, field, problem)
        if len(args) > 3:
            raise TypeError(f"{type(self).__name__} takes at most 3 arguments (source, field, problem)")
        source, field, problem = (("", "", "") + tuple(args))[-3:] if len(args) != 2 else (args[0], "", args[1])
        self.source, self.field, self.problem = source, field or "", problem
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if self.field:
            return f"{where}{self.label} '{self.field}': {self.problem}"
        return f"{where}{self.problem}"
