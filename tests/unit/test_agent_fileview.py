"""The file backend seen as the agent's two slots (``updater.agent.fileview``): each image
directory state of an update's life, as the README's rules produce it (``fileslots.run`` is the
initrd's boot), read as the A/B facts the agent's state machine expects on partitions."""

from __future__ import annotations

import pytest

from updater import fileslots
from updater.agent import fileview
from updater.agent.seam import Booted
from updater.errors import SlotError
from updater.filebackend import Directory, Image, Trailer
from updater.fileslots import BROKEN, NEW, OLD, ROOT, FileState

H1, H2, H3 = ("1" * 64, "2" * 64, "3" * 64)


def directory(files: dict[str, tuple[str, str]], revert: bool = False,
              tries: int | None = None) -> Directory:  # fmt: skip
    """``files``: name -> (root hash, version)."""
    images = {name: Image(name, 3 * 4096, Trailer(h, 4096, 8192, v))
              for name, (h, v) in files.items()}  # fmt: skip
    return Directory("/images", FileState(frozenset(files), revert, tries), images)


def boot(d: Directory) -> Directory:
    """One boot's renames (the initrd's plan), the images moving with their names."""
    files = {n: (i.trailer.root_hash, i.trailer.version) for n, i in d.images.items()
             if i.trailer}  # fmt: skip
    state = d.state
    for step in fileslots.plan(state):
        if step.kind == "rename":
            files[step.dst] = files.pop(step.src)
        elif step.kind == "remove":
            files.pop(step.src, None)
        state = fileslots.apply(state, step)
    return directory(files, state.revert, state.tries)


def facts(b: Booted) -> tuple[object, ...]:
    return (b.slot.letter, b.slot.version, b.slot.successful, b.other.letter, b.other.version,
            b.other.bootable, b.next_slot, b.on_trial)  # fmt: skip


def test_an_update_committed() -> None:
    known: dict[str, str] = {}
    d = directory({ROOT: (H1, "1")})
    b = fileview.booted(d, known)
    assert facts(b) == ("A", "1", True, "B", None, False, "A", False)
    known = fileview.letters(d, known)
    assert known == {"A": H1}
    # staged: root-new.img with its counter boots next, as the target slot B
    d = directory({ROOT: (H1, "1"), NEW: (H2, "2")}, tries=3)
    b = fileview.booted(d, known)
    assert facts(b) == ("A", "1", True, "B", "2", True, "B", False)
    assert (b.other.priority, b.other.tries) == (2, 3)
    known = fileview.letters(d, known)
    # the boot promotes it: B is booted, on trial, with one try spent; A is the way back
    d = boot(d)
    assert d.state == FileState(frozenset({ROOT, OLD}), tries=2)
    b = fileview.booted(d, known)
    assert facts(b) == ("B", "2", False, "A", "1", True, "B", True)
    assert b.slot.tries == 2 and b.slot.bootable
    # mark-good: the counter goes
    d = directory({ROOT: (H2, "2"), OLD: (H1, "1")})
    b = fileview.booted(d, fileview.letters(d, known))
    assert facts(b) == ("B", "2", True, "A", "1", True, "B", False)


def test_a_failed_trial_reverted_by_the_agent() -> None:
    known = {"A": H1, "B": H2}
    # mark-bad of the booted image: the revert marker; the booted slot no longer boots
    d = directory({ROOT: (H2, "2"), OLD: (H1, "1")}, revert=True, tries=2)
    b = fileview.booted(d, known)
    assert (b.slot.letter, b.slot.priority, b.slot.bootable, b.next_slot) == ("B", 0, False, "A")
    d = boot(d)
    assert set(d.images) == {ROOT, BROKEN} and d.state.tries is None
    b = fileview.booted(d, known)
    # back on A, proven good; B holds the reverted release and never boots again
    assert facts(b) == ("A", "1", True, "B", "2", False, "A", False)


def test_a_trial_boot_that_never_came_up_falls_back() -> None:
    """Tries run out (each boot of the new image counted, none marked good): the initrd goes
    back by itself, and the agent finds the target slot spent, as GRUB's fallback shows it."""
    known = {"A": H1, "B": H2}
    d = directory({ROOT: (H2, "2"), OLD: (H1, "1")}, tries=0)
    b = fileview.booted(d, known)
    assert not b.slot.bootable and b.next_slot == "A"
    d = boot(d)
    b = fileview.booted(d, known)
    assert (b.slot.letter, b.other.letter, b.other.bootable) == ("A", "B", False)


def test_letters_alternate_and_survive_an_update_made_by_hand() -> None:
    # the agent knew only A = 1; someone staged 2 and booted it: 2 takes the letter opposite to
    # its neighbour's, and the next image takes A again
    d = directory({ROOT: (H2, "2"), OLD: (H1, "1")}, tries=2)
    assert fileview.root_letter(d, {"A": H1}) == "B"
    known = fileview.letters(d, {"A": H1})
    assert known == {"A": H1, "B": H2}
    d = directory({ROOT: (H2, "2"), NEW: (H3, "3")}, tries=3)
    known = fileview.letters(d, known)
    assert known == {"B": H2, "A": H3}
    assert fileview.root_letter(boot(d), known) == "A"
    # nothing known and no neighbour: A
    assert fileview.root_letter(directory({ROOT: (H3, "3")}), {}) == "A"
    # a table with foreign keys is ignored
    assert fileview.root_letter(directory({ROOT: (H3, "3")}), {"Z": H3}) == "A"


def test_no_root_image_is_refused() -> None:
    with pytest.raises(SlotError, match="no root.img"):
        fileview.booted(directory({OLD: (H1, "1")}), {})
