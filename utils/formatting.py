"""How the kit writes sizes, counts and durations in every message a person reads: "1.5 GB", "1.25M",
"3 min 05 s". Defined once here, below everything that prints them."""

from __future__ import annotations


def format_bytes(n: int) -> str:
    """"1.5 GB": every message about memory says sizes this way."""
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def format_count(n: int) -> str:
    """"1.25M", "12.5K": parameter counts."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def format_duration(seconds: float) -> str:
    """"4.2 s", "3 min 05 s", "2 h 10 min"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"
