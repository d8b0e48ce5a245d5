"""One JSON encoder for every ``--json`` output: sorted keys, two-space indent, trailing newline."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2) + "\n"
