"""What every part of jobq can hold: limits on names, JSON nesting, dates and text, checked
before anything is written (PostgreSQL's text and jsonb cannot store NUL, a NOTIFY channel name
is at most 63 bytes, timestamps must convert to UTC). Plain Python, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

MAX_JSON_DEPTH = 64
"""Arrays and objects nested deeper than this in a JSON body are refused."""

NOTIFY_CHANNEL_PREFIX = "procrastinate_queue_v1#"
"""Workers LISTEN on this prefix plus the queue name (Procrastinate's manager)."""
MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL's NAMEDATALEN - 1: the longest channel name NOTIFY/LISTEN take."""
MAX_QUEUE_NAME = MAX_IDENTIFIER_BYTES - len(NOTIFY_CHANNEL_PREFIX)
"""40: a queue name's channel fits. Queue names are ASCII, so characters are bytes."""

EARLIEST_RUN_AT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_RUN_AT = datetime(2100, 1, 1, tzinfo=UTC)


def has_nul(text: str) -> bool:
    return "\x00" in text


def json_problem(value: Any, path: str) -> tuple[str, str] | None:
    """The first (field, message) that PostgreSQL's jsonb cannot hold, or that nests too deep."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if has_nul(item):
                return where, "must not contain NUL (\\u0000) characters"
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return where, f"nests too deep (more than {MAX_JSON_DEPTH} levels)"
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and has_nul(key):
                        return where, "must not contain NUL (\\u0000) characters in its keys"
                    stack.append((child, f"{where}.{key}", depth + 1))
            else:
                stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def utc(value: datetime) -> datetime | None:
    """The time in UTC, or None when it cannot be written as one (year 1 ahead of UTC,
    year 9999 behind it)."""
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def run_at_problem(value: datetime) -> str | None:
    converted = utc(value)
    if converted is None or converted.tzinfo is None:
        return None if converted is not None else _RANGE
    if not EARLIEST_RUN_AT <= converted < LATEST_RUN_AT:
        return _RANGE
    return None


_RANGE = (f"must be between {EARLIEST_RUN_AT:%Y-%m-%d} and {LATEST_RUN_AT:%Y-%m-%d} "
          "(UTC)")
