"""One table type for every result: rendered to the terminal (rich), to markdown (report.md),
to CSV (the run dir); dnnlab.run.tracking turns it into a wandb.Table.

    t = Table("layers", ["layer", "MACs"], [["features.0", 70_276_800]], title="AlexNet",
              formats={"MACs": "{:,}"})
    console.print(t.to_rich()); md = t.to_markdown(); t.to_csv(run_dir); tracker.table(t)
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def jsonable(x: Any) -> Any:
    """A value JSON can hold: inf/-inf/nan become the strings "inf", "-inf", "nan"; tensors and
    numpy scalars become Python numbers; tuples become lists."""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return jsonable(x.item())
    if hasattr(x, "value") and type(x).__module__ != "builtins" and isinstance(
            getattr(x, "value", None), str):  # an Enum such as DType
        return x.value
    return x


def _plain(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v))
    return str(v)


@dataclass
class Table:
    """Rows of values under named columns. `formats` maps a column to a format string
    ("{:,}", "{:.2e}") or a callable; other cells are shown plainly (floats with 4 digits)."""

    key: str
    columns: list[str]
    rows: list[list[Any]]
    title: str = ""
    formats: dict[str, Any] = field(default_factory=dict)
    caption: str = ""

    def __post_init__(self) -> None:
        self.columns = list(self.columns)
        self.rows = [list(r) for r in self.rows]
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"table {self.key}: row {r} has {len(r)} cells for "
                                 f"{len(self.columns)} columns")

    def cell(self, column: str, value: Any) -> str:
        """The text of one cell."""
        fmt = self.formats.get(column)
        if value is None or fmt is None:
            return _plain(value)
        return fmt(value) if callable(fmt) else fmt.format(value)

    def text_rows(self) -> list[list[str]]:
        return [[self.cell(c, v) for c, v in zip(self.columns, r)] for r in self.rows]

    def to_rich(self, max_rows: int | None = None):
        """A rich.table.Table (at most `max_rows` rows, the rest counted in the caption)."""
        from rich.table import Table as RichTable

        t = RichTable(title=self.title or None, caption=self.caption or None)
        for j, c in enumerate(self.columns):
            numeric = any(isinstance(r[j], (int, float)) and not isinstance(r[j], bool)
                          for r in self.rows)
            t.add_column(c, justify="right" if numeric else "left")
        rows = self.text_rows()
        shown = rows if max_rows is None else rows[:max_rows]
        for r in shown:
            t.add_row(*r)
        if len(shown) < len(rows):
            t.caption = f"... {len(rows) - len(shown)} more rows in {self.key}.csv"
        return t

    def to_markdown(self) -> str:
        """A GitHub-flavoured markdown table ('|' in cells escaped)."""
        esc = [[s.replace("|", "\\|") for s in r] for r in self.text_rows()]
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(lines)

    def to_csv(self, directory: Path) -> Path:
        """<directory>/<key>.csv with the raw values (inf as "inf")."""
        path = Path(directory) / f"{self.key.replace('/', '_')}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            w.writerows([[csv_value(v) for v in r] for r in self.rows])
        return path


def csv_value(v: Any) -> Any:
    """A cell as CSV and W&B take it: a shape as 2x3, inf as "inf"."""
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v))
    return jsonable(v)
