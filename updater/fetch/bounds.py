"""What every transport promises about the bytes of a target with a signed length.

A target's bytes are read from ``start`` to its signed length and never beyond: a source that
has more is refused before its first byte when it says so (Content-Length, a file's size), or
as soon as it delivers more (the endless-data attack), and one that ends early is refused as
truncated. Checking the bytes themselves against the signed hashes is not done here: the slot
writer checks every frame and the whole file, and small targets are checked by the client.

Pure: error constructors and one generator that caps a chunk stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from updater.errors import VerificationError


def longer(url: str, length: int, seen: int | str) -> VerificationError:
    return VerificationError(
        f"{url} is longer than its signed length {length} (the source has {seen} bytes); "
        "refused before writing past the signed length"
    )


def truncated(url: str, length: int, seen: int | str) -> VerificationError:
    return VerificationError(
        f"{url} is truncated: the source has {seen} bytes, the signed length is {length}"
    )


def check_start(start: int, length: int | None) -> None:
    if start < 0 or (length is not None and start > length):
        raise ValueError(f"start {start} outside 0..{length}")


def capped(chunks: Iterable[bytes], url: str, offset: int, length: int) -> Iterator[bytes]:
    """``chunks`` (a source's bytes from ``offset``) up to ``length``: more is an error before
    the chunk that crosses the length is handed out, fewer is an error at the end."""
    for chunk in chunks:
        if offset + len(chunk) > length:
            raise longer(url, length, f"at least {offset + len(chunk)}")
        offset += len(chunk)
        yield chunk
    if offset < length:
        raise truncated(url, length, offset)
