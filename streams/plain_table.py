"""Plain-text tables for the terminal, as the demo and the audit print them."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Collection[int]) -> str:
    """Columns padded to their widest cell; those in `left` flush left, the others right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  " + "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])
