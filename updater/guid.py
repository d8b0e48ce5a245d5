"""GPT GUIDs and partition UUIDs as values: ``Guid``, read from text or from 16 bytes.

Why not ``uuid.UUID``: importing ``uuid`` (Python 3.11) imports ``platform``, which compiles a
dozen regular expressions, and the ``_uuid`` extension; in the emulated test machine that was
about 25 ms of every command that reads a partition table, and the 266 ``uuid.UUID`` objects of
one GPT read (two per entry of a 128-entry array, most of them unused) about 10 ms more. A
``Guid`` keeps the 16 bytes as the table stores them, so reading one is a length check.

Behaviour, the same as ``uuid.UUID``'s:
- ``str()`` is the lower-case 8-4-4-4-12 form (what the kernel, blkid and sgdisk print);
- ``.bytes`` is the big-endian (RFC 4122) order; ``.bytes_le`` is GPT's on-disk order, where the
  first three fields are little-endian;
- text is read as ``uuid.UUID`` reads it: every ``urn:`` and ``uuid:`` removed, braces stripped
  from both ends, hyphens anywhere, then exactly 32 hexadecimal digits of either case.

Deliberately different:
- ``uuid.UUID`` hands those 32 characters to ``int(text, 16)``, which also takes surrounding
  whitespace, a ``+`` sign, a ``0x`` prefix, underscores between digits and non-ASCII decimal
  digits (``'٣'`` is 3). Here they are refused: no tool writes a GUID so, and the kernel finds a
  ``PARTUUID=`` by comparing the text with its own form, which would never match;
- a ``Guid`` equals only a ``Guid`` of the same value, never a ``uuid.UUID``, a string or bytes,
  so that comparing a GUID with its text fails in a test instead of passing by accident;
- there is no ordering (nothing sorts GUIDs; a listing sorts their text), and no ``int``,
  ``fields``, ``version`` or ``variant``.

Pure: no I/O, and nothing imported at run time (``name_based_guid`` imports hashlib when it
runs). A random GUID takes its random bytes from the caller (``random_guid(os.urandom(16))``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import builtins

_SHOWN = 40  # characters of bad text quoted in an error message


def _swapped(raw: bytes) -> bytes:
    """Between RFC 4122 order and GPT's: the first three fields (4, 2 and 2 bytes) reversed.
    Its own inverse."""
    return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]


def _sixteen(value: object, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    raw = bytes(value)
    if len(raw) != 16:
        raise ValueError(f"{name} must be 16 bytes, not {len(raw)}")
    return raw


def _parsed(text: str) -> bytes:
    """The 16 bytes (RFC 4122 order) of a GUID written as text; see the module docstring."""
    digits = text.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    if len(digits) == 32:
        try:
            raw = bytes.fromhex(digits)  # ASCII digits only, unlike int(digits, 16)
        except ValueError:
            pass
        else:
            # bytes.fromhex skips whitespace between byte pairs: 16 bytes from 32 characters
            # means that every character was a hexadecimal digit.
            if len(raw) == 16:
                return raw
    shown = repr(text[:_SHOWN]) + ("..." if len(text) > _SHOWN else "")
    raise ValueError(f"{shown} is not a UUID (32 hexadecimal digits, hyphens optional)")


class Guid:
    """A GUID: ``Guid(text)``, ``Guid(bytes_le=16 bytes)`` (as on disk) or ``Guid(bytes=16
    bytes)`` (RFC 4122 order). Immutable; equal and hashed by value."""

    __slots__ = ("_le",)
    _le: builtins.bytes

    def __init__(
        self,
        text: str | None = None,
        *,
        bytes_le: builtins.bytes | bytearray | memoryview | None = None,
        bytes: builtins.bytes | bytearray | memoryview | None = None,  # uuid.UUID's name
    ) -> None:
        if bytes_le is not None and text is None and bytes is None:
            _set_le(self, _sixteen(bytes_le, "bytes_le"))
        elif bytes is not None and text is None and bytes_le is None:
            _set_le(self, _swapped(_sixteen(bytes, "bytes")))
        elif isinstance(text, str) and bytes is None and bytes_le is None:
            _set_le(self, _swapped(_parsed(text)))
        else:
            raise TypeError("Guid() takes one of: a UUID's text (a str), bytes_le= or bytes=")

    @property
    def bytes_le(self) -> builtins.bytes:
        """The 16 bytes as a GPT stores them (first three fields little-endian)."""
        return self._le

    @property
    def bytes(self) -> builtins.bytes:
        """The 16 bytes in RFC 4122 (big-endian) order."""
        return _swapped(self._le)

    def __str__(self) -> str:
        h = _swapped(self._le).hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def __repr__(self) -> str:
        return f"Guid('{self}')"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Guid):
            return NotImplemented
        return self._le == other._le

    def __hash__(self) -> int:
        return hash(self._le)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Guid cannot be changed (setting {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Guid cannot be changed (deleting {name!r})")

    def __reduce__(self) -> tuple[type[Guid], tuple[str]]:
        """Copied and pickled through its text (the frozen ``__setattr__`` refuses the default
        way, which sets the slot on an empty instance)."""
        return (Guid, (str(self),))


# The slot's own setter, which the frozen __setattr__ does not guard (and faster than
# object.__setattr__: a GPT read makes a Guid per entry).
_set_le = Guid.__dict__["_le"].__set__

NIL = Guid(bytes_le=bytes(16))
"""The all-zero GUID: a GPT entry of this type is unused."""


def _with_version(raw16: bytes, version: int) -> Guid:
    """The 16 bytes ``raw16`` with the RFC 4122 variant bits and ``version`` set."""
    stamped = bytearray(raw16)
    stamped[6] = stamped[6] & 0x0F | version << 4
    stamped[8] = stamped[8] & 0x3F | 0x80
    return Guid(bytes=stamped)


def random_guid(random16: bytes) -> Guid:
    """A random (version 4) GUID from 16 random bytes: ``uuid.uuid4()`` made of the same bytes."""
    if len(random16) != 16:
        raise ValueError(f"a random GUID needs 16 random bytes, not {len(random16)}")
    return _with_version(random16, 4)


def name_based_guid(namespace: Guid, name: str) -> Guid:
    """The name-based (version 5, SHA-1) GUID of ``name`` in ``namespace``: ``uuid.uuid5``."""
    import hashlib  # here: only disk creation derives GUIDs, never a command's start-up

    digest = hashlib.sha1(namespace.bytes + name.encode()).digest()
    return _with_version(digest[:16], 5)
