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
