"""Human-friendly durations and sizes for the config file, parsed exactly.

Arithmetic goes through Decimal so that "250ms" is exactly the float 0.25 and
"1.5KiB" is exactly 1536 bytes, and so that format/parse round-trips.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

_DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
_DURATION_HINT = "use seconds or e.g. 250ms, 30s, 5m, 1h30m, 1d"

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")
_SIZE_HINT = "use bytes or e.g. 512, 64KiB, 256MiB, 1GiB, 10MB, 1kB"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like '1h30m'; config files read better with units."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r} ({_DURATION_HINT})")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"duration must be finite, got {value!r}")
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration, got {type(value).__name__} ({_DURATION_HINT})")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"duration must not be negative, got {value!r}")
    try:
        if text and not text[-1].isalpha():
            return _checked_seconds(Decimal(text), value)
    except InvalidOperation:
        pass
    total = Decimal(0)
    pos = 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != pos:
            break
        total += Decimal(part.group(1)) * _DURATION_UNITS[part.group(2)]
        pos = part.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r} ({_DURATION_HINT})")
    return _checked_seconds(total, value)


def _checked_seconds(total: Decimal, original: str) -> float:
    if not total.is_finite():
        raise ValueError(f"duration must be finite, got {original!r}")
    if total < 0:
        raise ValueError(f"duration must not be negative, got {original!r}")
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest unit string that parses back to exactly `seconds`."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format duration {seconds!r}")
    exact = Decimal(repr(float(seconds)))
    millis = exact * 1000
    if millis != millis.to_integral_value():
        return f"{exact:f}s"
    rest = int(millis)
    if rest == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    if rest:
        parts.append(f"{rest}ms")
    return "".join(parts)


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like '256MiB' (SI kB/MB/GB and IEC KiB/MiB/GiB)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r} ({_SIZE_HINT})")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"size must be a whole number of bytes, got {value!r}")
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size, got {type(value).__name__} ({_SIZE_HINT})")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"size must not be negative, got {value!r}")
    match = _SIZE.fullmatch(text)
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"invalid size {value!r} ({_SIZE_HINT})")
    total = Decimal(match.group(1)) * unit
    if total != total.to_integral_value():
        raise ValueError(f"size must be a whole number of bytes, got {value!r}")
    return int(total)


def format_size(size: int) -> str:
    """The largest unit that expresses `size` exactly; parses back to the same int."""
    if size < 0:
        raise ValueError(f"cannot format size {size!r}")
    if size == 0:
        return "0"
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "kB"):
        count, rest = divmod(size, _SIZE_UNITS[unit.lower()])
        if count and not rest:
            return f"{count}{unit}"
    return str(size)
