"""Plain-text tables for the CLI (``prunekit info``, reports)."""

from __future__ import annotations

from typing import Any

from prunekit.errors import escape


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple | list):
        return escape("x".join(str(x) for x in v))
    return escape(str(v))  # names from a model file cannot forge lines or colours


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Aligned text table: a header, a rule, one line per row; numbers right-aligned with thousands
    separators, floats to 4 significant digits, shapes as ``1x20x24x24``, missing values as ``-``.

    ``columns`` picks and orders the keys (default: every key, in order of first appearance).
    """
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    right = [any(_numeric(r.get(c)) for r in rows) and all(_numeric(r.get(c)) or r.get(c) is None for r in rows)
             for c in columns]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out)
