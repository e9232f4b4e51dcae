"""The quantities people write in a config: durations (``10s``, ``1h30m``) and sizes
(``512MB``), read and written back. Free of pydantic: the config's fields validate with these,
and the running gateway writes durations in its messages ("not heard for 5m")."""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)")
_SIZE_UNITS = {
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


#: The shortest duration anywhere: the smallest unit people write. Shorter ones only come from
#: typos, and would break the wall-clock slot arithmetic (``now / interval`` overflows).
MIN_DURATION = 0.001
#: The longest duration anywhere: beyond any sensible setting, yet exact in the buffer's integer
#: milliseconds and far below what timers accept (``threading.TIMEOUT_MAX``, about 292 years).
MAX_DURATION = 3650 * 86400.0
#: The largest size: a file offset (``off_t``) and an SQLite integer are signed 64-bit.
MAX_SIZE = 2**63 - 1
#: How durations and sizes are written, for the JSON Schema (ECMA-262 regexes).
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"
SIZE_PATTERN = r"^\d+(\.\d+)?\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"


def brief(value: object, limit: int = 60) -> str:
    """``repr(value)``, shortened when long: a 70 000-character value must not flood the one line
    that reports it."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[: limit - 10]}…{length}"


def format_duration(seconds: float) -> str:
    """``seconds`` as people write it: ``1d``, ``18h12m15s``, ``100ms``."""
    left = round(seconds * 1000)
    parts: list[str] = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_duration(text: object) -> float:
    """Seconds from ``"10s"``, ``"500ms"``, ``"1h30m"`` or a plain number of seconds, between
    :data:`MIN_DURATION` and :data:`MAX_DURATION`."""
    if isinstance(text, bool):
        raise ValueError("a duration is a number with a unit, like 10s, 500ms, 5m, 1h or 1d")
    if isinstance(text, int | float):
        seconds = float(text)
    elif isinstance(text, str):
        compact = text.replace(" ", "")
        parts = _DURATION_PART.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise ValueError(
                f"{text!r} is not a duration; write a number with a unit, like 10s, 500ms, 5m, "
                "1h, 1d or 1h30m"
            )
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError("a duration is a number with a unit, like 10s, 500ms, 5m, 1h or 1d")
    # YAML's .inf and .nan, and digits enough to overflow a float, are numbers but no duration.
    if not math.isfinite(seconds):
        raise ValueError(
            f"{brief(text)} is not a duration; write a finite number with a unit, like 10s, 5m "
            "or 1d"
        )
    if seconds <= 0:
        raise ValueError(f"{brief(text)}: a duration must be longer than zero")
    if seconds < MIN_DURATION:
        raise ValueError(f"{brief(text)} is shorter than 1ms, the shortest duration allowed")
    if seconds > MAX_DURATION:
        raise ValueError(
            f"{brief(text)} is longer than {format_duration(MAX_DURATION)}, the longest "
            "duration allowed"
        )
    return seconds


def parse_size(text: object) -> int:
    """Bytes from ``"512MB"``, ``"1GiB"`` or a plain number of bytes."""
    if isinstance(text, bool):
        raise ValueError("a size is a number with a unit, like 512MB or 2GiB")
    if isinstance(text, int):
        size = text
    elif isinstance(text, str) and (match := _SIZE.fullmatch(text.strip())):
        # Digits enough to overflow a float give inf, which int() refuses: check first.
        number = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
        size = int(number) if math.isfinite(number) else MAX_SIZE + 1
    else:
        raise ValueError(
            f"{brief(text)} is not a size; write a number with a unit, like 512MB, 2GB or 1GiB"
        )
    if size <= 0:
        raise ValueError(f"{brief(text)}: a size must be larger than zero")
    if size > MAX_SIZE:
        raise ValueError(f"{brief(text)} is larger than any file can be (8EiB)")
    return size
