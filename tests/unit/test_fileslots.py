"""File-slot rename plans: outcomes from the rules, every power-cut point."""

from __future__ import annotations

import itertools

import pytest

from updater import fileslots as fs
from updater.fileslots import BROKEN, NEW, OLD, ROOT, FileState


def st(*images: str, revert: bool = False, tries: int | None = None) -> FileState:
    return FileState(frozenset(images), revert, tries)


# Expected outcomes written from the rules (not from the module).
CASES = [
    (st(ROOT), st(ROOT)),
    (st(ROOT, OLD), st(ROOT, OLD)),
    # promotion: root -> old, new -> root; counter decremented on the boot
    (st(ROOT, NEW, tries=3), st(ROOT, OLD, tries=2)),
    (st(ROOT, OLD, NEW, tries=3), st(ROOT, OLD, tries=2)),
    # the last try is taken like any other: the counter reaches 0, the new image still boots
    (st(ROOT, OLD, tries=1), st(ROOT, OLD, tries=0)),
    # counter runs out: fall back to the old image by itself
    (st(ROOT, OLD, tries=0), st(ROOT, BROKEN)),
    (st(ROOT, tries=0), st(ROOT)),
    # revert marker: root -> broken, old -> root, marker gone
    (st(ROOT, OLD, revert=True), st(ROOT, BROKEN)),
    (st(ROOT, OLD, NEW, revert=True, tries=2), st(ROOT, BROKEN)),
    (st(ROOT, revert=True), st(ROOT)),
    # a cut mid-revert left no root.img: the old image becomes root.img, nothing else is left
    (st(OLD), st(ROOT)),
    (st(OLD, BROKEN), st(ROOT, BROKEN)),
    # marked good: no counter, nothing to do
    (st(ROOT, OLD, BROKEN), st(ROOT, OLD, BROKEN)),
]


@pytest.mark.parametrize(("start", "end"), CASES)
def test_outcome_follows_the_rules(start: FileState, end: FileState) -> None:
    assert fs.run(start) == end


def _with_images(s: FileState) -> bool:
    return bool(s.images & {ROOT, NEW, OLD})


ALL = [
    st(*imgs, revert=rv, tries=t)
    for n in range(5)
    for imgs in itertools.combinations([ROOT, NEW, OLD, BROKEN], n)
    for rv in (False, True)
    for t in (None, 0, 1, 2)
]


@pytest.mark.parametrize("start", [s for s in ALL if _with_images(s)])
def test_every_cut_point_still_boots(start: FileState) -> None:
    steps = fs.plan(start)
    whole = fs.run(start)
    assert ROOT in whole.images
    state = start
    for step in steps[:-1]:  # a cut after the last step is a finished boot
        state = fs.apply(state, step)
        # a power cut here: the next boot's plan must end with root.img ...
        resumed = fs.run(state)
        assert ROOT in resumed.images
        # ... and with the same images as the uninterrupted boot
        assert resumed.images == whole.images
        assert resumed.revert is False


def test_steps_are_single_renames_or_unlinks() -> None:
    for start in ALL:
        for step in fs.plan(start):
            assert step.kind in ("rename", "remove", "set-tries", "mark-revert")
            if step.kind == "rename":
                assert step.src != step.dst


def test_a_plan_that_never_ends_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule that never shrinks the state (a bug) ends in an error, not in an endless boot."""
    monkeypatch.setattr(fs, "_next", lambda state, decremented: fs.Step("set-tries", value=1))
    with pytest.raises(AssertionError, match="^file-slot plan does not converge$"):
        fs.plan(st(ROOT, tries=1))
