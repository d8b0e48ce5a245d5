"""The project's value classes: ``@dataclass`` without generated code.

The standard ``dataclasses`` module writes the source of every ``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, ``__setattr__`` and ``__delattr__`` of every class and compiles each on
its own (Python 3.11), and importing it pulls in ``inspect`` with ``ast``, ``dis`` and
``tokenize``. On a short command such as ``updater status`` that was about half of the
updater's own start-up (31 of 64 ms on a workstation, more in the test VM), spent before the
command did anything. Here the same methods are written once and shared by every class: a
decorated class only gets a tuple of its fields and the methods its options ask for, so
creating a class costs microseconds, and one more instance costs a few microseconds more than
a compiled ``__init__`` would (records are made by the dozen on the start-up path, never by
the million).

The part of ``dataclasses`` the project uses, with its behaviour: fields in definition order,
a base class's fields first (a redefined field keeps its place); ``ClassVar`` annotations are
no fields; a field without a default may not follow one with a default; ``field(default=,
default_factory=, init=, repr=, compare=)``; ``__post_init__``; ``frozen`` (assignment and
deletion raise ``FrozenInstanceError``, an AttributeError); ``eq`` (same class, field tuples
equal) with ``__hash__`` set as the standard rules set it; ``order``; a method the class body
defines itself is kept; ``__match_args__``; ``replace``, ``fields``, ``asdict``. Type checkers
see the decorator as a dataclass transform, so they check constructors and frozen fields as
they would for the standard decorator.

Pure: no I/O, and nothing imported at run time.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_options):  # what the type checker reads; nothing at run time
        return lambda function: function


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""A field's ``default`` or ``default_factory`` when it has none."""


class FrozenInstanceError(AttributeError):
    """An assignment to, or deletion of, a field of a frozen record."""


class Field:
    """One field of a record class, as ``fields()`` returns it."""

    __slots__ = ("name", "default", "default_factory", "init", "repr", "compare")

    def __init__(
        self,
        default: Any,
        default_factory: Any,
        init: bool,
        repr: bool,  # the standard module's name for it
        compare: bool,
    ) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r})"


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    init: bool = True,
    repr: bool = True,  # the standard module's name for it
    compare: bool = True,
) -> Any:
    """Describe one field beyond its default, as the standard ``field()`` does."""
    return Field(default, default_factory, init, repr, compare)


# -- the shared methods --------------------------------------------------------------------------


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    params: tuple[Field, ...] = cls.__record_init__
    if len(args) > len(params):
        raise TypeError(
            f"{cls.__qualname__}() takes {len(params)} positional arguments "
            f"but {len(args)} were given"
        )
    values = self.__dict__
    for f, value in zip(params, args, strict=False):  # fewer arguments than fields is usual
        values[f.name] = value
    for f in params[len(args) :]:
        name = f.name
        if name in kwargs:
            values[name] = kwargs.pop(name)
        elif f.default is not MISSING:
            values[name] = f.default
        elif f.default_factory is not MISSING:
            values[name] = f.default_factory()
        else:
            raise TypeError(f"{cls.__qualname__}() missing required argument: {name!r}")
    if kwargs:
        name = next(iter(kwargs))
        known = any(f.name == name for f in params)
        raise TypeError(
            f"{cls.__qualname__}() got multiple values for argument {name!r}"
            if known
            else f"{cls.__qualname__}() got an unexpected keyword argument {name!r}"
        )
    for f in cls.__record_late__:
        if f.default_factory is not MISSING:
            values[f.name] = f.default_factory()
        elif f.default is not MISSING:
            values[f.name] = f.default
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _compared(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, name) for name in type(self).__record_compare__])


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_repr__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: object) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) == _compared(other)


def _hash(self: Any) -> int:
    return hash(_compared(self))


def _frozen_setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _lt(self: Any, other: object) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) < _compared(other)


def _le(self: Any, other: object) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) <= _compared(other)


def _gt(self: Any, other: object) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) > _compared(other)


def _ge(self: Any, other: object) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) >= _compared(other)


_ORDER = {"__lt__": _lt, "__le__": _le, "__gt__": _gt, "__ge__": _ge}


# -- the decorator -------------------------------------------------------------------------------


def _is_class_var(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _set_new(cls: Any, name: str, value: object) -> None:
    """Set a method unless the class body defines it itself (as the standard module does)."""
    if name not in cls.__dict__:
        setattr(cls, name, value)


def _process(cls: Any, frozen: bool, order: bool, eq: bool) -> Any:
    found: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get("__record_fields__", ()):
            found[f.name] = f
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_class_var(annotation):
            continue
        given = cls.__dict__.get(name, MISSING)
        if isinstance(given, Field):
            f = given
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        else:
            f = Field(given, MISSING, True, True, True)
        if isinstance(f.default, (list, dict, set)):
            raise ValueError(
                f"mutable default {type(f.default)} for field {name} is not allowed: "
                "use default_factory"
            )
        f.name = name
        found[name] = f
    every = tuple(found.values())
    params = tuple(f for f in every if f.init)
    seen_default = False
    for f in params:
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")
        seen_default = seen_default or has_default

    cls.__record_fields__ = every
    cls.__record_init__ = params
    cls.__record_late__ = tuple(f for f in every if not f.init)
    cls.__record_repr__ = tuple(f.name for f in every if f.repr)
    cls.__record_compare__ = tuple(f.name for f in every if f.compare)
    _set_new(cls, "__init__", _init)
    _set_new(cls, "__repr__", _repr)
    _set_new(cls, "__match_args__", tuple(f.name for f in params))

    # __hash__ as the standard module decides it: a body that defines __eq__ alone gets
    # __hash__ = None from Python itself, which counts as not defined.
    body_hash = cls.__dict__.get("__hash__", MISSING)
    explicit_hash = not (body_hash is MISSING or (body_hash is None and "__eq__" in cls.__dict__))
    if eq:
        _set_new(cls, "__eq__", _eq)
        if not explicit_hash:
            cls.__hash__ = _hash if frozen else None
    if order:
        if not eq:
            raise ValueError("eq must be true if order is true")
        for name, compare in _ORDER.items():
            if name in cls.__dict__:
                raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}")
            setattr(cls, name, compare)
    if frozen:
        for name, method in (("__setattr__", _frozen_setattr), ("__delattr__", _frozen_delattr)):
            if name in cls.__dict__:
                raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}")
            setattr(cls, name, method)
    return cls


@dataclass_transform(field_specifiers=(field,))
def dataclass(
    cls: type | None = None, /, *, frozen: bool = False, order: bool = False, eq: bool = True
) -> Any:
    """Make ``cls`` a value class, as the standard ``@dataclass`` with these options does."""
    if cls is None:
        return lambda given: _process(given, frozen, order, eq)
    return _process(cls, frozen, order, eq)


# -- functions on records ------------------------------------------------------------------------


def fields(obj: object) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    cls = obj if isinstance(obj, type) else type(obj)
    found: tuple[Field, ...] | None = getattr(cls, "__record_fields__", None)
    if found is None:
        raise TypeError("must be called with a record class or instance")
    return found


def replace(obj: T, /, **changes: Any) -> T:
    """A new record like ``obj`` with ``changes``; fields outside ``__init__`` are made anew."""
    for f in fields(obj):
        if not f.init:
            if f.name in changes:
                raise ValueError(f"field {f.name} has init=False: it cannot be replaced")
        elif f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return type(obj)(**changes)


def asdict(obj: object) -> dict[str, Any]:
    """The record's fields as a dict, records, lists, tuples and dicts inside converted too."""
    if isinstance(obj, type) or not hasattr(type(obj), "__record_fields__"):
        raise TypeError("asdict() should be called on record instances")
    result: dict[str, Any] = _plain(obj)
    return result


def _plain(value: Any) -> Any:
    if hasattr(type(value), "__record_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*[_plain(v) for v in value])
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return type(value)((_plain(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (str, bytes, int, float, bool, type(None), frozenset)):
        return value
    import copy  # here: only for a mutable leaf, never on the start-up path

    return copy.deepcopy(value)
