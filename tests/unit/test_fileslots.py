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


# ------------------------------------------------------------- what the commands do, and cuts

PART = fs.PART


def _origin_after(start: FileState, steps: list[fs.Step]) -> tuple[FileState, dict[str, str]]:
    """The state after ``steps`` and, for each name, which original file it holds (tracked
    here by hand from rename semantics, not by the module)."""
    origin = {n: n for n in start.images} | {PART: PART}
    state = start
    for step in steps:
        if step.kind == "rename":
            origin[step.dst] = origin.pop(step.src)
        elif step.kind == "remove":
            origin.pop(step.src, None)
        state = fs.apply(state, step)
    return state, origin


STAGE_FROM = [st(ROOT), st(ROOT, OLD), st(ROOT, OLD, BROKEN), st(ROOT, NEW, tries=3),
              st(ROOT, NEW, OLD, tries=1)]  # fmt: skip


@pytest.mark.parametrize("start", STAGE_FROM)
def test_staging_boots_the_old_root_until_the_last_rename(start: FileState) -> None:
    steps = fs.stage(start, 3)
    assert steps[-1] == fs.Step("rename", PART, NEW)
    for cut in range(len(steps) + 1):
        state, origin = _origin_after(start, steps[:cut])
        booted = origin.get(fs.boots_next(state) or "")
        if cut == len(steps):
            assert booted == PART  # the whole sequence: the new image boots, on trial
            after = fs.run(state)
            assert after.tries == 2 and ROOT in after.images and OLD in after.images
        elif NEW in start.images and cut <= 1 + (OLD in start.images):
            assert booted in (ROOT, NEW)  # the earlier staged image may still be promoted
        else:
            assert booted == ROOT
        # whatever boots, a later boot never reverts to an image older than root.img
        assert fs.run(state).revert is False


def test_staging_then_failing_boots_fall_back_to_the_previous_root() -> None:
    state, origin = _origin_after(st(ROOT, OLD), fs.stage(st(ROOT, OLD), 2))
    for _ in range(3):  # tries 2 -> 1 -> 0 -> revert
        state = fs.run(state)
    assert state.images == {ROOT, BROKEN}
    assert fs.run(state) == state


@pytest.mark.parametrize(
    ("start", "why"),
    [
        (st(OLD), "no root.img"),
        (st(ROOT, OLD, revert=True), "a revert is pending"),
        (st(ROOT, OLD, tries=2), "on trial"),
    ],
)
def test_staging_is_refused_when_unsafe(start: FileState, why: str) -> None:
    with pytest.raises(fs.Refused, match=why):
        fs.stage(start, 1)


def test_mark_good_drops_the_counter_only() -> None:
    assert fs.mark_good(st(ROOT, OLD, tries=1)) == [fs.Step("remove", fs.TRIES)]
    assert fs.mark_good(st(ROOT, OLD)) == []
    with pytest.raises(fs.Refused, match="not booted yet"):
        fs.mark_good(st(ROOT, NEW, tries=3))
    marked = fs.run(fs.apply(st(ROOT, OLD, tries=0), fs.Step("remove", fs.TRIES)))
    assert marked == st(ROOT, OLD)  # no revert once good


def test_rollback_drops_a_staged_image_or_asks_for_the_old_one() -> None:
    staged = st(ROOT, NEW, tries=3)
    after, origin = _origin_after(staged, fs.rollback(staged))
    assert after == st(ROOT) and fs.run(after) == st(ROOT) and origin[ROOT] == ROOT
    assert fs.rollback(st(ROOT, OLD)) == [fs.Step("mark-revert")]
    assert fs.boots_next(fs.apply(st(ROOT, OLD), fs.Step("mark-revert"))) == OLD
    assert fs.rollback(st(ROOT, OLD, revert=True)) == []
    with pytest.raises(fs.Refused, match="no root-old.img"):
        fs.rollback(st(ROOT, BROKEN))


@pytest.mark.parametrize("start", [s for s in ALL if _with_images(s)])
def test_boots_next_names_the_file_that_ends_as_root(start: FileState) -> None:
    end, origin = _origin_after(start, fs.plan(start))
    assert fs.boots_next(start) == origin[ROOT]
    # and the same file after a cut at any step (the boot resumes, the same file boots)
    for cut in range(1, len(fs.plan(start))):
        mid, mid_origin = _origin_after(start, fs.plan(start)[:cut])
        assert mid_origin[fs.boots_next(mid) or ""] == origin[ROOT]


# Exact step lists, written from the docstrings' order: the old image goes first, then a
# staged one, then the counter, then the rename that makes the new image the staged one.
@pytest.mark.parametrize(
    ("start", "steps"),
    [
        (st(ROOT), [fs.Step("set-tries", value=3), fs.Step("rename", PART, NEW)]),
        (st(ROOT, OLD), [fs.Step("remove", OLD), fs.Step("set-tries", value=3),
                         fs.Step("rename", PART, NEW)]),
        (st(ROOT, NEW, tries=3), [fs.Step("remove", NEW), fs.Step("set-tries", value=3),
                                  fs.Step("rename", PART, NEW)]),
        (st(ROOT, NEW, OLD, tries=1), [fs.Step("remove", OLD), fs.Step("remove", NEW),
                                       fs.Step("set-tries", value=3),
                                       fs.Step("rename", PART, NEW)]),
    ],
)  # fmt: skip
def test_staging_takes_exactly_these_steps(start: FileState, steps: list[fs.Step]) -> None:
    assert fs.stage(start, 3) == steps


def test_mark_good_is_refused_while_a_revert_is_pending() -> None:
    with pytest.raises(fs.Refused) as info:
        fs.mark_good(st(ROOT, OLD, revert=True))
    assert str(info.value) == (
        "a revert is pending (system-revert): the booted image is on its way out"
    )


def test_rollback_of_a_staged_image_without_a_counter_removes_only_the_image() -> None:
    assert fs.rollback(st(ROOT, NEW)) == [fs.Step("remove", NEW)]
    assert fs.rollback(st(ROOT, NEW, OLD, tries=2)) == [
        fs.Step("remove", NEW), fs.Step("remove", fs.TRIES)
    ]


def test_boots_next_follows_a_removal_of_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer follows the plan's removals as well as its renames: a plan (none of today's
    rules) that removed ``root.img`` would boot nothing."""
    monkeypatch.setattr(fs, "plan", lambda state: [fs.Step("remove", ROOT)])
    assert fs.boots_next(st(ROOT, OLD)) is None
    monkeypatch.setattr(
        fs, "plan", lambda state: [fs.Step("remove", ROOT), fs.Step("rename", OLD, ROOT)]
    )
    assert fs.boots_next(st(ROOT, OLD)) == OLD


@pytest.mark.parametrize(
    "start, due",
    [
        (FileState(frozenset({ROOT, NEW}), tries=2), True),  # the staged image boots next
        (FileState(frozenset({ROOT, OLD, NEW}), tries=2), True),
        (FileState(frozenset({ROOT})), False),  # the booted image again
        (FileState(frozenset({ROOT, OLD}), tries=1), False),  # root.img on trial, again
        (FileState(frozenset({ROOT, OLD}), revert=True), False),  # back to a good image
        (FileState(frozenset({ROOT, OLD, NEW}), revert=True, tries=2), False),  # revert wins
    ],
)
def test_pre_reboot_hooks_are_due_only_into_a_staged_image(start: FileState, due: bool) -> None:
    assert fs.pre_reboot_due(start) is due


def test_one_more_try_keeps_an_image_on_its_last_try_from_reverting() -> None:
    last = FileState(frozenset({ROOT, OLD}), tries=0)
    steps = fs.one_more_try(last)
    assert steps == [fs.Step("set-tries", value=1)]
    after = last
    for step in steps:
        after = fs.apply(after, step)
    assert fs.run(after) == FileState(frozenset({ROOT, OLD}), tries=0)  # booted root.img again
    assert BROKEN in fs.run(last).images  # without it, the reboot would revert
    for start in (FileState(frozenset({ROOT, OLD}), tries=1), FileState(frozenset({ROOT, OLD})),
                  FileState(frozenset({ROOT, OLD}), revert=True, tries=0),
                  FileState(frozenset({ROOT, NEW}), tries=0)):  # fmt: skip
        assert fs.one_more_try(start) == []
