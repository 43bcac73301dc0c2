"""Data errors that name the file, line and field, in one line."""

from __future__ import annotations

SKIP_HINT = "set --config.data.on_error=skip to skip (and count) rows like this one"


class DataError(ValueError):
    """Bad input data. `str(err)` is one line: `file:line: field: message`."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None, skippable: bool = True):
        self.path, self.line, self.field, self.message = path, line, field, message
        # A malformed row (`data.on_error=skip` drops it), not a wrong file or data kind.
        self.skippable = skippable and line is not None
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"field {field!r}: " if field is not None else ""
        super().__init__(f"{where}{what}{message}")


class ErrorPolicy:
    """What to do with a malformed row: `"raise"` (default) stops, `"skip"` skips and counts.

    Skipped rows are counted per reason in `skipped` and the first few messages are kept in
    `examples`, so a run can report exactly what it dropped.
    """

    def __init__(self, on_error: str = "raise", keep_examples: int = 5):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: dict[str, int] = {}
        self.examples: list[str] = []
        self._keep = keep_examples

    def handle(self, err: DataError) -> None:
        if self.on_error == "raise":
            raise err
        key = f"{err.field}: {err.message}" if err.field else err.message
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if len(self.examples) < self._keep:
            self.examples.append(str(err))

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.num_skipped:
            return "no rows skipped"
        parts = "; ".join(f"{n} x {k!r}" for k, n in sorted(self.skipped.items()))
        return f"skipped {self.num_skipped} malformed rows ({parts}); first: {self.examples[0]}"
