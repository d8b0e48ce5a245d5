"""One JSON encoder for every ``--json`` output: sorted keys, two-space indent, trailing newline;
and the one JSON decoder for what the project reads (``loads``: state files, records, answers of
a lock server, indexes), which turns a document nested too deeply for the decoder's recursion,
or an integer too long to convert, into the ``JSONDecodeError`` every other malformed document
gives."""

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


def loads(data: bytes | str) -> Any:
    """``json.loads``, except that a document nested deeper than the interpreter's recursion
    limit (``[[[[...``, a few kilobytes suffice) or holding an integer longer than ``int()``
    converts (4300 digits) raises ``json.JSONDecodeError`` like any other malformed input,
    instead of ``RecursionError`` or a bare ``ValueError``: everything read is hostile."""
    import json

    try:
        return json.loads(data)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except ValueError as exc:  # an integer of more digits than int() converts (4300)
        raise json.JSONDecodeError(str(exc), "", 0) from None


def read_bounded(path: str, limit: int) -> bytes | None:
    """A small file's bytes; None when it is missing, DataError naming ``path`` when it holds
    more than ``limit`` bytes (no more than ``limit + 1`` are read)."""
    from updater.errors import DataError

    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        return None
    if len(raw) > limit:
        raise DataError(f"{path} is larger than {limit} bytes")
    return raw


def bounded_loads(data: bytes, limit: int) -> Any:
    """A small state file's JSON document, read back: DataError when it is larger than
    ``limit`` bytes or not JSON (the caller checks its shape)."""
    from updater.errors import DataError

    if len(data) > limit:
        raise DataError(f"more than {limit} bytes")
    try:
        return loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"not JSON: {exc}") from None
