"""``updater.frozen.Frozen`` keeps what ``@dataclass(frozen=True)`` gave its records: equality and
hash over the fields, a repr naming them, and no assignment after construction. The expected
behaviour is the dataclass's, checked side by side with a real frozen dataclass."""

from __future__ import annotations

import dataclasses

import pytest

from updater.frozen import Frozen


class Point(Frozen):
    __slots__ = ("x", "label")
    x: int
    label: str

    def __init__(self, x: int, label: str) -> None:
        self._set(x=x, label=label)


class Other(Point):
    """The same fields, another class (as dataclasses, a subclass is not equal either)."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class Reference:
    x: int
    label: str


def test_equality_and_hash_follow_the_fields_like_a_frozen_dataclass() -> None:
    for a, b in [((1, "a"), (1, "a")), ((1, "a"), (2, "a")), ((1, "a"), (1, "b"))]:
        assert (Point(*a) == Point(*b)) is (Reference(*a) == Reference(*b))
        assert (Point(*a) != Point(*b)) is (Reference(*a) != Reference(*b))
    assert hash(Point(1, "a")) == hash(Point(1, "a"))
    assert len({Point(1, "a"), Point(1, "a"), Point(2, "a")}) == 2


def test_another_class_with_the_same_fields_is_not_equal() -> None:
    assert Point(1, "a") != Other(1, "a")
    assert Point(1, "a") != (1, "a")


def test_repr_names_the_fields_like_a_dataclass() -> None:
    assert repr(Point(1, "a")) == repr(Reference(1, "a")).replace("Reference", "Point")


@pytest.mark.parametrize("change", [lambda p: setattr(p, "x", 2), lambda p: delattr(p, "x"),
                                    lambda p: setattr(p, "new", 1)])  # fmt: skip
def test_no_field_can_be_set_or_deleted_after_construction(change: object) -> None:
    point = Point(1, "a")
    assert callable(change)
    with pytest.raises(AttributeError, match="immutable"):
        change(point)
    assert (point.x, point.label) == (1, "a")
