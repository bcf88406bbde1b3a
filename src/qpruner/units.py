"""Byte sizes as people read and write them ("6GiB", "1.25 GiB").

Its own module because both the evaluation reports and the memory model print sizes, and the
memory model must not import the evaluation package (evaluation measures memory, not the
other way round).
"""

from __future__ import annotations


def format_bytes(n: int | float) -> str:
    """``n`` bytes in the largest binary unit below 1024 of it, GiB at most."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
