"""``updater.records`` behaves as the standard ``dataclasses`` does for what the project uses.

The oracle is the standard module itself: every class shape below is made twice, once with each
decorator, from the same annotations, defaults and options, and every observable behaviour is
compared: construction (and its errors), repr, equality, hash, order, frozen assignment,
``replace``, ``asdict``, ``fields`` and ``__match_args__``. Hypothesis draws the shapes (field
counts, defaults, factories, ``init``/``repr``/``compare`` flags, inheritance) and the calls.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from updater import records

# The standard module reads a "ClassVar[...]" string annotation as a class variable only when the
# class's module has ClassVar from typing under that name (this one, for the classes made here).
assert ClassVar is not None

# One field: (has a default, uses a factory, init, repr, compare).
FieldShape = tuple[bool, bool, bool, bool, bool]
fields_shape = st.lists(st.tuples(*[st.booleans()] * 5), min_size=0, max_size=5)
options = st.fixed_dictionaries({"frozen": st.booleans(), "order": st.booleans()})
values = st.one_of(st.integers(-3, 3), st.text(max_size=2), st.tuples(st.integers(0, 2)))


class Pair:
    """The same shape made with both decorators (or the errors both raised making it)."""

    def __init__(self, shape: list[FieldShape], opts: dict[str, bool], base: str) -> None:
        self.names = [f"f{i}" for i in range(len(shape))]
        self.std, self.std_error = self._make(dataclasses.dataclass, dataclasses.field, shape,
                                              opts, base)  # fmt: skip
        self.own, self.own_error = self._make(records.dataclass, records.field, shape, opts, base)

    def _make(
        self,
        decorator: Callable[..., Any],
        field: Callable[..., Any],
        shape: list[FieldShape],
        opts: dict[str, bool],
        base: str,
    ) -> tuple[Any, type[BaseException] | None]:
        body: dict[str, Any] = {"__annotations__": {}}
        bases: tuple[type, ...] = ()
        if base:  # a first field from a decorated base class, with a default or without
            inherited: dict[str, Any] = {"__annotations__": {"b0": "int"}}
            if base == "default":
                inherited["b0"] = 7
            bases = (decorator(**opts)(type("Base", (), inherited)),)
        for i, (default, factory, init, show, compare) in enumerate(shape):
            name = self.names[i]
            body["__annotations__"][name] = "int"
            if not default and init and show and compare:
                continue
            kwargs: dict[str, Any] = {"init": init, "repr": show, "compare": compare}
            if default:
                if factory:
                    kwargs["default_factory"] = partial(list, [i])
                else:
                    kwargs["default"] = i * 10
            body[name] = field(**kwargs)
        body["__annotations__"]["ignored"] = "ClassVar[int]"  # no field, for either decorator
        body["ignored"] = 5
        try:
            return decorator(**opts)(type("Shape", bases, body)), None
        except (TypeError, ValueError) as e:
            return None, type(e)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except (TypeError, ValueError, AttributeError) as e:
        return "error", type(e).__name__ if not isinstance(e, AttributeError) else "AttributeError"


def build(cls: Any, args: list[Any], kwargs: dict[str, Any]) -> tuple[str, Any]:
    return outcome(lambda: cls(*args, **kwargs))


@settings(max_examples=600, deadline=None)
@given(
    shape=fields_shape,
    opts=options,
    base=st.sampled_from(["", "default", "plain"]),
    data=st.data(),
    kw=st.dictionaries(st.sampled_from(["f0", "f1", "f2", "f3", "b0", "zz"]), values, max_size=3),
    other_args=st.lists(values, max_size=6),
)
def test_both_decorators_agree(
    shape: list[FieldShape],
    opts: dict[str, bool],
    base: str,
    data: st.DataObject,
    kw: dict[str, Any],
    other_args: list[Any],
) -> None:
    pair = Pair(shape, opts, base)
    assert pair.own_error == pair.std_error, "one decorator refused the class, the other not"
    if pair.std is None:
        event("class refused")
        return
    std, own = pair.std, pair.own
    # Half the calls fit the class (every required argument, then some optional ones, no
    # keywords), half are drawn blind (too few, too many, unknown or repeated names).
    if data.draw(st.booleans(), label="fitting call"):
        params = [f for f in dataclasses.fields(std) if f.init]
        required = sum(
            1 for f in params
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        count = data.draw(st.integers(required, len(params)), label="positional arguments")
        args = data.draw(st.lists(values, min_size=count, max_size=count), label="args")
        kw = {}
    else:
        args = data.draw(st.lists(values, max_size=6), label="args")
    assert [f.name for f in records.fields(own)] == [f.name for f in dataclasses.fields(std)]
    assert own.__match_args__ == std.__match_args__
    assert (own.__hash__ is None) == (std.__hash__ is None)

    a_std, a_own = build(std, args, kw), build(own, args, kw)
    assert a_std[0] == a_own[0], f"construction: {a_std} against {a_own}"
    event(f"construction: {a_std[0]}")
    if a_std[0] == "error":
        assert a_std[1] == a_own[1]
        return
    x_std, x_own = a_std[1], a_own[1]
    # (An init=False field without a default is unset: both fail alike on reading it.)
    assert outcome(lambda: repr(x_own)) == outcome(lambda: repr(x_std))
    assert outcome(lambda: records.asdict(x_own)) == outcome(lambda: dataclasses.asdict(x_std))
    for name in ["b0", *pair.names]:
        assert getattr(x_own, name, None) == getattr(x_std, name, None)

    b_std, b_own = build(std, other_args, {}), build(own, other_args, {})
    assert b_std[0] == b_own[0]
    if b_std[0] == "ok":
        y_std, y_own = b_std[1], b_own[1]
        assert outcome(lambda: x_own == y_own) == outcome(lambda: x_std == y_std)
        assert outcome(lambda: x_own != y_own) == outcome(lambda: x_std != y_std)
        if opts["order"]:
            for op in (operator.lt, operator.le, operator.gt, operator.ge):
                assert outcome(partial(op, x_own, y_own)) == outcome(partial(op, x_std, y_std))
        if std.__hash__ is not None:
            if outcome(lambda: x_std == y_std) == ("ok", True):
                equal_hashes = outcome(lambda: hash(x_own) == hash(y_own))
                assert equal_hashes in {("ok", True), ("error", "TypeError")}
            assert outcome(lambda: hash(x_own))[0] == outcome(lambda: hash(x_std))[0]

    set_std = outcome(lambda: setattr(x_std, "f0", 1))
    set_own = outcome(lambda: setattr(x_own, "f0", 1))
    assert set_own[0] == set_std[0]
    del_std = outcome(lambda: delattr(x_std, "b0" if base else "zz"))
    del_own = outcome(lambda: delattr(x_own, "b0" if base else "zz"))
    assert del_own[0] == del_std[0]

    r_std = outcome(lambda: dataclasses.replace(x_std, **kw))
    r_own = outcome(lambda: records.replace(x_own, **kw))
    assert r_own[0] == r_std[0]
    if r_std[0] == "ok":
        assert outcome(lambda: repr(r_own[1])) == outcome(lambda: repr(r_std[1]))
    else:
        assert r_own[1] == r_std[1]


def test_post_init_runs_after_every_field_is_set() -> None:
    seen: list[tuple[int, int]] = []

    @records.dataclass(frozen=True)
    class Span:
        start: int
        end: int = 9
        size: int = records.field(init=False, default=0)

        def __post_init__(self) -> None:
            seen.append((self.start, self.end))
            object.__setattr__(self, "size", self.end - self.start)

    assert Span(2).size == 7
    assert records.replace(Span(2), end=5).size == 3
    assert seen == [(2, 9), (2, 9), (2, 5)]
    with pytest.raises(ValueError, match="init=False"):
        records.replace(Span(2), size=1)


def test_a_frozen_record_refuses_assignment_like_the_standard_one() -> None:
    @records.dataclass(frozen=True)
    class P:
        x: int

    p = P(1)
    with pytest.raises(records.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x
    assert p.x == 1


def test_methods_the_body_defines_are_kept() -> None:
    @records.dataclass(frozen=True)
    class Named:
        x: int

        def __repr__(self) -> str:
            return "mine"

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 42

    assert repr(Named(1)) == "mine"
    assert Named(1) == Named(2)
    assert hash(Named(1)) == 42


def test_a_body_with_eq_alone_gets_the_standard_hash_rule() -> None:
    def shape(decorator: Callable[..., Any], frozen: bool) -> Any:
        def eq(self: object, other: object) -> bool:
            return True

        body = {"__annotations__": {"x": "int"}, "__eq__": eq, "__hash__": None}
        return decorator(frozen=frozen)(type("E", (), body))

    for frozen in (False, True):
        own = shape(records.dataclass, frozen)
        std = shape(dataclasses.dataclass, frozen)
        assert (own.__hash__ is None) == (std.__hash__ is None)


def test_mutable_defaults_are_refused_like_the_standard_module() -> None:
    for decorator in (records.dataclass, dataclasses.dataclass):
        with pytest.raises(ValueError, match="mutable default"):
            decorator(type("M", (), {"__annotations__": {"x": "list[int]"}, "x": []}))


def test_asdict_converts_nested_records_and_containers() -> None:
    @records.dataclass(frozen=True)
    class Inner:
        n: int

    @records.dataclass(frozen=True)
    class Outer:
        inner: Inner
        many: tuple[Inner, ...]
        by_name: dict[str, Inner]
        plain: list[int]

    outer = Outer(Inner(1), (Inner(2),), {"a": Inner(3)}, [4])
    doc = records.asdict(outer)
    assert doc == {"inner": {"n": 1}, "many": ({"n": 2},), "by_name": {"a": {"n": 3}},
                   "plain": [4]}  # fmt: skip
    assert doc["plain"] is not outer.plain  # a copy, as the standard module makes
    with pytest.raises(TypeError):
        records.asdict(Outer)
    with pytest.raises(TypeError):
        records.fields(3)


def test_no_command_module_uses_the_standard_dataclasses() -> None:
    """One mechanism: the standard module is back on every path the moment one import uses it."""
    from pathlib import Path

    root = Path(records.__file__).parent
    users = [str(p.relative_to(root)) for p in root.rglob("*.py")
             if p.name != "records.py"
             and any(line.startswith(("import dataclasses", "from dataclasses "))
                     for line in p.read_text().splitlines())]  # fmt: skip
    assert users == []


def test_records_of_two_classes_are_never_equal_nor_ordered() -> None:
    made = []
    decorators: list[Callable[..., Any]] = [records.dataclass, dataclasses.dataclass]
    for decorator in decorators:
        shape = {"__annotations__": {"x": "int"}}
        a: Any = decorator(order=True, frozen=True)(type("A", (), dict(shape)))
        b: Any = decorator(order=True, frozen=True)(type("B", (), dict(shape)))
        ordered = [outcome(partial(op, a(1), b(2)))
                   for op in (operator.lt, operator.le, operator.gt, operator.ge)]  # fmt: skip
        made.append((a(1) == b(1), a(1) != b(1), *ordered))
    refused = ("error", "TypeError")
    assert made[0] == made[1] == (False, True, refused, refused, refused, refused)


# -- the messages and corners the side-by-side comparison does not reach --------------------


def three() -> Any:
    """Made in each test that needs it, so that making it is part of the test."""

    @records.dataclass(frozen=True)
    class Three:
        a: int
        b: int = 2
        c: int = records.field(default=3)

    Three.__qualname__ = "Three"
    return Three


def message(call: Callable[[], object]) -> str:
    try:
        call()
    except (TypeError, ValueError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    raise AssertionError("no error")


def test_every_refusal_says_what_is_wrong() -> None:
    Three = three()  # noqa: N806 - a class
    one = Three(1)
    assert message(lambda: Three(1, 2, 3, 4)) == (
        "TypeError: Three() takes 3 positional arguments but 4 were given"
    )
    missing = message(lambda: Three())
    assert missing == "TypeError: Three() missing required argument: 'a'"
    assert message(lambda: Three(1, a=1)) == (
        "TypeError: Three() got multiple values for argument 'a'"
    )
    assert message(lambda: Three(1, d=1)) == (
        "TypeError: Three() got an unexpected keyword argument 'd'"
    )
    assert message(lambda: setattr(one, "a", 2)) == (
        "FrozenInstanceError: cannot assign to field 'a'"
    )
    assert message(lambda: delattr(one, "a")) == "FrozenInstanceError: cannot delete field 'a'"
    assert message(lambda: records.field(default=1, default_factory=list)) == (
        "ValueError: cannot specify both default and default_factory"
    )
    assert message(lambda: records.asdict(3)) == (
        "TypeError: asdict() should be called on record instances"
    )
    assert message(lambda: records.fields(3)) == (
        "TypeError: must be called with a record class or instance"
    )
    shapes: list[tuple[dict[str, Any], dict[str, bool], str]] = [
        ({"__annotations__": {"x": "list[int]"}, "x": []}, {},
         "ValueError: mutable default <class 'list'> for field x is not allowed: "
         "use default_factory"),
        ({"__annotations__": {"x": "int", "y": "int"}, "x": 1}, {},
         "TypeError: non-default argument 'y' follows default argument"),
        ({"__annotations__": {}}, {"order": True, "eq": False},
         "ValueError: eq must be true if order is true"),
        ({"__annotations__": {}, "__lt__": lambda s, o: True}, {"order": True},
         "TypeError: cannot overwrite attribute __lt__ in class S"),
        ({"__annotations__": {}, "__setattr__": lambda s, n, v: None}, {"frozen": True},
         "TypeError: cannot overwrite attribute __setattr__ in class S"),
    ]  # fmt: skip
    for body, options, expected in shapes:
        make = partial(records.dataclass(**options), type("S", (), body))
        assert message(make) == expected


def test_a_field_spec_defaults_to_a_plain_field_and_sets_the_class_default() -> None:
    Three = three()  # noqa: N806 - a class
    assert repr(records.MISSING) == "MISSING"
    assert Three.c == 3 and Three.b == 2  # the class attribute is the default, as the standard
    f = records.fields(Three)[2]
    assert (f.name, f.default, f.init, f.repr, f.compare) == ("c", 3, True, True, True)
    assert repr(Three(1)) == "Three(a=1, b=2, c=3)"
    assert Three(1) != Three(1, c=4)


def test_class_variables_and_classes_without_fields() -> None:
    import typing

    @records.dataclass(frozen=True)
    class Counted:
        total: ClassVar[int] = 0
        n: int = 1

    # Evaluated annotations (no postponed evaluation) name it typing.ClassVar.
    evaluated = type("E", (), {"__annotations__": {"k": typing.ClassVar[int], "n": int}})
    assert [f.name for f in records.fields(records.dataclass(evaluated))] == ["n"]
    assert [f.name for f in records.fields(Counted)] == ["n"] and Counted().n == 1
    empty = records.dataclass(frozen=True)(type("Empty", (), {}))
    assert empty() == empty() and records.asdict(empty()) == {}


def test_asdict_keeps_named_tuples_and_copies_mutable_leaves() -> None:
    from collections import deque, namedtuple

    Point = namedtuple("Point", "x y")

    @records.dataclass(frozen=True)
    class Holder:
        point: Any
        queue: Any

    inner = [1]
    doc = records.asdict(Holder(Point(three()(1), 2), deque([inner])))
    assert type(doc["point"]) is Point and doc["point"].x == {"a": 1, "b": 2, "c": 3}
    assert doc["queue"] == deque([[1]]) and doc["queue"][0] is not inner  # a deep copy
