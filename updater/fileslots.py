"""File-slot state machine: which image files exist -> the initrd's rename steps.

A machine on the file backend keeps its OS as image files in one directory:
``root.img`` (current), ``root-new.img`` (staged), ``root-old.img`` (previous),
``root-broken.img`` (a reverted image), the ``system-revert`` marker and a
``tries`` counter file. This module is pure: given which of those exist (and
the counter's value) it returns the ordered steps the initrd performs. Every
step is one rename, one unlink or one atomic counter write, so a power cut
between any two steps leaves a state from which :func:`plan` finishes the job
and ``root.img`` boots.

Rules (in priority order):
- revert marker (ignored without ``root-old.img``): drop a staged new image
  and the counter, ``root.img`` -> ``root-broken.img``, ``root-old.img``
  -> ``root.img``, then drop the marker (last, so a cut before it resumes the revert);
- staged new image: ``root.img`` -> ``root-old.img``, then ``root-new.img``
  -> ``root.img`` (a cut in between leaves no ``root.img`` but a new one,
  which resumes the promotion);
- tries counter: 0 left means the new image never got marked good, so write
  the revert marker (then the revert rules apply); otherwise decrement it once
  per boot. ``mark-good`` deletes the counter.

It does NOT touch files, mount, or run dm-verity; the initrd hook and the
writer do that.
"""

from __future__ import annotations

from typing import Literal

from updater import records

ROOT = "root.img"
NEW = "root-new.img"
OLD = "root-old.img"
BROKEN = "root-broken.img"
MARKER = "system-revert"
TRIES = "tries"

StepKind = Literal["rename", "remove", "set-tries", "mark-revert"]


@records.dataclass(frozen=True)
class FileState:
    """What the image directory holds; ``tries`` is None when no counter."""

    images: frozenset[str]
    revert: bool = False
    tries: int | None = None


@records.dataclass(frozen=True)
class Step:
    kind: StepKind
    src: str = ""
    dst: str = ""
    value: int = 0


def apply(state: FileState, step: Step) -> FileState:
    """The state after one step, as the filesystem would hold it."""
    images = set(state.images)
    if step.kind == "rename":
        images.discard(step.src)
        images.add(step.dst)  # rename(2) replaces dst atomically
        return records.replace(state, images=frozenset(images))
    if step.kind == "remove":
        if step.src == MARKER:
            return records.replace(state, revert=False)
        if step.src == TRIES:
            return records.replace(state, tries=None)
        images.discard(step.src)
        return records.replace(state, images=frozenset(images))
    if step.kind == "set-tries":
        return records.replace(state, tries=step.value)
    return records.replace(state, revert=True)


def _next(state: FileState, decremented: bool) -> Step | None:
    imgs = state.images
    if state.revert and OLD not in imgs:
        return Step("remove", MARKER)  # nothing to go back to: boot as is
    if state.revert:
        if NEW in imgs:
            return Step("remove", NEW)
        if state.tries is not None:
            return Step("remove", TRIES)
        if ROOT in imgs:
            return Step("rename", ROOT, BROKEN)
        return Step("rename", OLD, ROOT)
    if NEW in imgs:
        if ROOT in imgs:
            return Step("rename", ROOT, OLD)
        return Step("rename", NEW, ROOT)
    if ROOT not in imgs and OLD in imgs:
        # Only a cut mid-revert leaves this (the marker is already gone only
        # if the rename finished, so this is defensive): boot the old image.
        return Step("rename", OLD, ROOT)
    if state.tries is not None and not decremented:
        if state.tries <= 0:
            if OLD in imgs:
                return Step("mark-revert")
            return Step("remove", TRIES)  # nothing to fall back to
        return Step("set-tries", value=state.tries - 1)
    return None


def plan(state: FileState) -> list[Step]:
    """The ordered steps one boot performs from ``state`` (empty: boot as is)."""
    steps: list[Step] = []
    decremented = False
    for _ in range(16):  # every rule shrinks the state; 16 bounds a bug
        step = _next(state, decremented)
        if step is None:
            return steps
        steps.append(step)
        decremented = decremented or step.kind in ("set-tries", "mark-revert")
        state = apply(state, step)
    raise AssertionError("file-slot plan does not converge")


def run(state: FileState) -> FileState:
    """The state after one whole boot's plan."""
    for step in plan(state):
        state = apply(state, step)
    return state


# --------------------------------------------------------------------- what the commands do
# The same kind of steps, taken by the running system instead of the initrd. Each is checked by
# the same cut-after-every-step rule: the boot plan from any intermediate state boots an image.

PART = "root-new.img.part"  # the image being written; not an image any rule boots


class Refused(ValueError):
    """The directory's state does not allow the command; the text says why."""


def stage(state: FileState, tries: int) -> list[Step]:
    """After ``root-new.img.part`` is written and verified: the steps that make it the image
    the next boot promotes, with ``tries`` boots to prove itself.

    ``root-old.img`` goes first: the promotion replaces it anyway, and a counter beside it
    (a cut between the counter and the last rename) would count down the good ``root.img``
    and then revert to the old image. Without it, a counter that runs out is only dropped.
    The counter comes before the rename, so that the new image never boots without one.
    """
    if ROOT not in state.images:
        raise Refused(f"no {ROOT}: nothing is installed to update from")
    if state.revert:
        raise Refused(f"a revert is pending ({MARKER}): reboot first")
    if state.tries is not None and NEW not in state.images:
        raise Refused(f"{ROOT} is on trial ({TRIES} counter): mark it good first")
    steps: list[Step] = []
    if OLD in state.images:
        steps.append(Step("remove", OLD))
    if NEW in state.images:
        steps.append(Step("remove", NEW))  # a staged image not yet booted: replaced
    steps.append(Step("set-tries", value=tries))
    steps.append(Step("rename", PART, NEW))
    return steps


def mark_good(state: FileState) -> list[Step]:
    """The booted ``root.img`` proved itself: the counter goes, so no boot reverts it."""
    if state.revert:
        raise Refused(f"a revert is pending ({MARKER}): the booted image is on its way out")
    if NEW in state.images:
        raise Refused(f"{NEW} is staged but not booted yet: nothing to mark until it boots")
    return [Step("remove", TRIES)] if state.tries is not None else []


def rollback(state: FileState) -> list[Step]:
    """Go back: a staged image that never booted is dropped (with its counter); otherwise the
    revert marker asks the next boot to put ``root-old.img`` back."""
    if NEW in state.images:
        steps = [Step("remove", NEW)]
        return steps + ([Step("remove", TRIES)] if state.tries is not None else [])
    if state.revert:
        return []  # already asked for
    if OLD not in state.images:
        raise Refused(f"no {OLD} to go back to")
    return [Step("mark-revert")]


def boots_next(state: FileState) -> str | None:
    """Which of today's files the next boot mounts as ``root.img`` (None: nothing boots)."""
    origin = {name: name for name in state.images}
    for step in plan(state):
        if step.kind == "rename":
            origin[step.dst] = origin.pop(step.src, step.src)
        elif step.kind == "remove":
            origin.pop(step.src, None)
    return origin.get(ROOT)


def one_more_try(state: FileState) -> list[Step]:
    """A first-boot-of-slot hook of the booted ``root.img`` asked for one more reboot: while it
    is on trial, the counter is raised so that this reboot cannot be its last try (the initrd
    reverts at 0). A proven image, a pending revert or a staged image need no step."""
    if state.revert or NEW in state.images or state.tries is None or state.tries >= 1:
        return []
    return [Step("set-tries", value=1)]


def pre_reboot_due(state: FileState) -> bool:
    """Whether a reboot from ``state`` runs the pre-reboot hooks: only when the next boot
    promotes ``root-new.img``, an image that has not been proven. A reboot into the booted
    ``root.img`` (on trial or not) or back to ``root-old.img`` runs none, as on partitions."""
    return boots_next(state) == NEW
