"""The GRUB environment block that carries the A/B state to stock GRUB.

Stock GRUB 2.06 cannot read GPT attribute bits, so the slot state reaches ``grub/grub.cfg`` through
``flatcar/grubenv`` on the ESP: GRUB's standard 1024-byte environment block (the format
``grub-editenv`` and ``load_env``/``save_env`` use). The GPT attributes stay the source of truth:

- after every attribute change the updater renders ``slot_vars`` of the new table into the block;
- GRUB only ever decrements ``usr_X_tries`` (``save_env``) when it boots a slot on trial;
- after boot the updater calls ``reconcile`` to carry those decrements back into the GPT.

``usr_sync`` records the attributes the block was rendered from. GRUB never touches it, so when it
still equals the current table the block is a faithful copy plus GRUB's decrements; when it
differs the block is stale (written before some later table change) and nothing is carried back.

Pure: bytes and values in, bytes and values out. This module does not read or write the ESP, and
it does not decide A/B transitions (``updater.slots`` does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from updater import slots as slotmod
from updater.errors import UsageError

SIZE = 1024  # GRUB_ENVBLK_DEFCFG size; save_env rewrites the block in place and never grows it
HEADER = b"# GRUB Environment Block\n"
SYNC_KEY = "usr_sync"
_HASH = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,2}")


def parse(block: bytes) -> dict[str, str]:
    """Variables of an environment block. Raises UsageError when the header is missing.

    GRUB escapes a backslash or newline inside a value with a backslash; those are undone here.
    Padding (``#``) and comment lines are ignored.
    """
    if not block.startswith(HEADER):
        raise UsageError("not a GRUB environment block (header missing)")
    text = block[len(HEADER) :].decode("utf-8", errors="replace")
    values: dict[str, str] = {}
    for line in _logical_lines(text):
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name] = value
    return values


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt)
        elif ch == "\n":
            lines.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        lines.append("".join(current))
    return lines


def render(values: Mapping[str, str]) -> bytes:
    """Exactly ``SIZE`` bytes: header, ``name=value`` lines in the given order, ``#`` padding."""
    body = bytearray(HEADER)
    for name, value in values.items():
        _check(name, value)
        body += f"{name}={value}\n".encode()
    if len(body) > SIZE:
        raise UsageError(
            f"GRUB environment needs {len(body)} bytes, more than the {SIZE} available"
        )
    return bytes(body) + b"#" * (SIZE - len(body))


def _check(name: str, value: str) -> None:
    # Values that GRUB would have to escape are refused rather than escaped: nothing the updater
    # writes needs them, and grub.cfg compares these values literally.
    # A leading '#' would turn the line into a comment that load_env skips.
    if not name or name.startswith("#") or any(c in name for c in "=\n\\"):
        raise UsageError(f"invalid GRUB environment variable name {name!r}")
    if any(c in value for c in "\n\\"):
        raise UsageError(f"invalid value for GRUB environment variable {name}: {value!r}")


def sync_token(slots: Sequence[slotmod.Slot]) -> str:
    """Every slot's partition number and full 64-bit attributes, e.g. ``3:0101000000000000``."""
    return ",".join(f"{s.partition}:{s.attributes:016x}" for s in sorted(slots, key=_number))


def _number(s: slotmod.Slot) -> int:
    return s.partition


def slot_vars(slots: Sequence[slotmod.Slot], hashes: Mapping[str, str]) -> dict[str, str]:
    """The variables ``grub/grub.cfg`` reads, for slots labelled USR-A and USR-B.

    ``hashes`` maps a slot letter (``A``/``B``) to the slot's dm-verity root hash; a slot without
    one gets an empty ``usr_X_hash`` (GRUB then passes no usable hash and the initrd refuses it).
    """
    values: dict[str, str] = {}
    for s in sorted(slots, key=_number):
        letter = s.letter
        if letter is None:
            continue
        root_hash = hashes.get(letter, "")
        if root_hash and not _HASH.fullmatch(root_hash):
            raise UsageError(f"root hash of USR-{letter} is not 64 lowercase hex digits")
        p = f"usr_{letter.lower()}_"
        values[p + "priority"] = str(s.priority)
        values[p + "tries"] = str(s.tries)
        values[p + "successful"] = "1" if s.successful else "0"
        values[p + "partuuid"] = str(s.partuuid).lower()
        values[p + "hash"] = root_hash
        values[p + "partition"] = str(s.partition)
    values[SYNC_KEY] = sync_token(slots)
    return values


def reconcile(env: Mapping[str, str], slots: Sequence[slotmod.Slot]) -> dict[int, int]:
    """GPT attribute changes implied by GRUB's decrements in ``env``: partition -> attributes.

    Empty unless ``env`` was rendered from exactly the current attributes (``usr_sync``). Only
    the tries field may go down; priority, successful and every bit the updater does not own are
    kept, and a value that is missing, not a number or not lower is ignored.
    """
    if env.get(SYNC_KEY) != sync_token(slots):
        return {}
    changes: dict[int, int] = {}
    for s in slots:
        if s.letter is None:
            continue
        raw = env.get(f"usr_{s.letter.lower()}_tries", "")
        if not _DIGITS.fullmatch(raw):
            continue
        tries = int(raw)
        if tries < s.tries:
            changes[s.partition] = slotmod.encode(s.attributes, tries=tries)
    return changes
