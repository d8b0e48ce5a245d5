"""One JSON encoder for every ``--json`` output: sorted keys, two-space indent, trailing newline."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any


def dumps(value: Any) -> str:
    import json  # here: most commands print no JSON, and the import costs start-up time

    return json.dumps(value, sort_keys=True, indent=2) + "\n"


def line(value: Any) -> str:
    """One JSON document on one line (event streams: one object per line), sorted keys."""
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n"


def bounded_loads(data: bytes, limit: int) -> Any:
    """A small state file's JSON document, read back: DataError when it is larger than
    ``limit`` bytes or not JSON (the caller checks its shape)."""
    import json

    from updater.errors import DataError

    if len(data) > limit:
        raise DataError(f"more than {limit} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"not JSON: {exc}") from None
