"""Tables for the technician commands of every driver (`scan`, `probe`, `templates`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO


def write_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Columns aligned: numbers to the right, text to the left."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = [all(_is_number(row[i]) for row in rows[1:]) for i in range(len(widths))]
    for row in rows:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True
