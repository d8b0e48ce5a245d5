"""``Frozen``: small immutable value classes without ``dataclasses``.

A base for records on the start-up path of short commands (``updater verity format``):
importing ``dataclasses`` pulls in ``inspect`` with ``ast``, ``dis`` and ``tokenize``, which
costs a bare interpreter's start-up again. A subclass lists its fields in ``__slots__``, sets
them once in ``__init__`` through ``_set``, and gets what ``@dataclass(frozen=True)`` gave:
equality and hash over the fields (in ``__slots__`` order), a repr, and an AttributeError on
any later assignment or deletion.

Pure: no I/O, no imports.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import NoReturn


class Frozen:
    __slots__: tuple[str, ...] = ()

    def _set(self, **fields: object) -> None:
        """Set fields in ``__init__``; every name must be in ``__slots__``."""
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Frozen)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")
