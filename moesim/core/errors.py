"""One error type for every bad input, rendered as a single line: where, what, and how to fix it.

The CLI catches `MoesimError` and prints `error: <file>: <field>: <problem>; <fix>` with exit
code 2, so no user ever sees a traceback for a mistake in their own input.
"""
from __future__ import annotations


class MoesimError(Exception):
    """Bad input, located precisely enough that the user can fix it without reading code."""

    def __init__(self, problem: str, *, field: str | None = None, file: str | None = None,
                 fix: str | None = None):
        self.problem = problem
        self.field = field
        self.file = file
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [p for p in (self.file, self.field) if p]
        head = ": ".join(parts + [self.problem])
        return f"{head}; {self.fix}" if self.fix else head

    def located(self, *, file: str | None = None, field_prefix: str | None = None) -> "MoesimError":
        """Return a copy that also names the file, or nests the field under a prefix."""
        field = self.field
        if field_prefix:
            field = f"{field_prefix}.{field}" if field else field_prefix
        return MoesimError(self.problem, field=field, file=file or self.file, fix=self.fix)
