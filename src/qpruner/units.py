"""Byte sizes and durations as people read and write them ("6GiB", "1.25 GiB", "90m", "2h").

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


_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | int | float) -> float:
    """``"90m"``, ``"2h"``, ``"600s"`` or a number of seconds → seconds (> 0)."""
    from qpruner.errors import QPrunerError

    raw = str(text).strip().lower()
    unit = raw[-1] if raw and raw[-1] in _SECONDS else "s"
    number = raw[:-1] if raw and raw[-1] in _SECONDS else raw
    try:
        seconds = float(number) * _SECONDS[unit]
    except ValueError:
        raise QPrunerError(f"cannot read {text!r} as a duration; write e.g. 600, 90m or 2h") from None
    if not seconds > 0:
        raise QPrunerError(f"a duration must be positive, got {text!r}")
    return seconds
