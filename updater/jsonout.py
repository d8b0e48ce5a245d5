"""One JSON encoder for every ``--json`` output: sorted keys, two-space indent, trailing newline;
for streams of events (``install --json``), the same sorted keys on one line each."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2) + "\n"


def line(value: Any) -> str:
    """One event of a stream: compact, on a single line."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n"
