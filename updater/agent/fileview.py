"""The file backend as the agent's two slots: the image directory read as a ``Booted`` value.

The agent's state machine (``updater.agent.machine``) thinks in two slots, each with a letter
that stays the slot's name across a reboot: it picks the target slot (the inactive one) before
it stages, and after the reboot it expects to find that very letter booted. On the file backend
the images move between names (``root-new.img`` becomes ``root.img`` at the next boot), so a
letter cannot be a file name. Here a letter names an image by its root hash (the trailer that
travels with it through every rename), and the two letters alternate: an image takes the letter
that ``root.img`` does not have. The assignment is remembered (``Letters``, a letter -> hash
table the seam keeps in the state directory) so that it survives the promotion and the revert:

- ``root.img`` keeps the letter remembered for its hash; a hash not remembered (a first run, an
  update made by hand) takes the letter opposite to its neighbour's, else ``A``;
- the other slot is the file that boots next when that is not ``root.img``, else
  ``root-new.img``, ``root-old.img``, ``root-broken.img``, whichever exists first.

How the slots' GPT-like facts follow from the rules (``updater.fileslots``):

- ``root.img``: on trial while the counter exists and nothing is staged (its tries are the
  counter's value); proven good once the counter is gone; priority 0 once a revert is pending
  (``mark-bad`` done);
- ``root-new.img``: on top (priority 2) with the counter's tries, unless a revert drops it;
- ``root-old.img``: a good image to go back to (priority 1, successful);
- ``root-broken.img``: never boots again (priority 0).

Pure: no file is read here; the seam (``updater.agent.fileseam``) reads the directory.
"""

from __future__ import annotations

from collections.abc import Mapping

from updater import fileslots
from updater.agent.seam import Booted, SlotView
from updater.errors import SlotError
from updater.filebackend import Directory, Image
from updater.fileslots import BROKEN, NEW, OLD, ROOT

LETTERS = ("A", "B")
Letters = Mapping[str, str]  # letter -> root hash of the image that has it


def opposite(letter: str) -> str:
    return LETTERS[1] if letter == LETTERS[0] else LETTERS[0]


def _hash(image: Image | None) -> str | None:
    return image.trailer.root_hash if image is not None and image.trailer is not None else None


def _version(image: Image | None) -> str | None:
    return image.trailer.version if image is not None and image.trailer is not None else None


def other_name(d: Directory) -> str | None:
    """The file shown as the inactive slot (see the module docstring)."""
    nxt = fileslots.boots_next(d.state)
    if nxt is not None and nxt != ROOT and nxt in d.images:
        return nxt
    return next((n for n in (NEW, OLD, BROKEN) if n in d.images), None)


def root_letter(d: Directory, known: Letters) -> str:
    by_hash = {h: letter for letter, h in known.items() if letter in LETTERS}
    root = _hash(d.images.get(ROOT))
    if root is not None and root in by_hash:
        return by_hash[root]
    other = other_name(d)
    neighbour = _hash(d.images.get(other)) if other else None
    if neighbour is not None and neighbour in by_hash and neighbour != root:
        return opposite(by_hash[neighbour])
    return LETTERS[0]


def letters(d: Directory, known: Letters) -> dict[str, str]:
    """The letter -> hash table that ``booted`` used: the one to remember."""
    mine = root_letter(d, known)
    table = {}
    root = _hash(d.images.get(ROOT))
    if root is not None:
        table[mine] = root
    other = other_name(d)
    neighbour = _hash(d.images.get(other)) if other else None
    if neighbour is not None and neighbour != root:
        table[opposite(mine)] = neighbour
    return table


def booted(d: Directory, known: Letters, boot_id: str = "") -> Booted:
    """The image directory as the booted slot and the other one (``root.img`` is booted)."""
    if ROOT not in d.images:
        raise SlotError(f"{d.path}: no {ROOT}: the agent runs on a system booted from it")
    st = d.state
    reverting = st.revert and OLD in d.images
    staged = NEW in d.images
    mine = root_letter(d, known)
    on_trial = st.tries is not None and not staged
    root = SlotView(mine, _version(d.images[ROOT]), 0 if reverting else 1,
                    (st.tries or 0) if on_trial else 0,
                    not reverting and not on_trial)  # fmt: skip
    name = other_name(d)
    theirs = opposite(mine)
    if name == NEW:
        other = SlotView(theirs, _version(d.images[NEW]), 0 if st.revert else 2, st.tries or 0,
                         False)  # fmt: skip
    elif name == OLD:
        other = SlotView(theirs, _version(d.images[OLD]), 1, 0, True)
    else:
        other = SlotView(theirs, _version(d.images.get(BROKEN)), 0, 0, False)
    nxt = fileslots.boots_next(st)
    nxt_letter = mine if nxt == ROOT else theirs if nxt is not None and nxt == name else None
    return Booted(root, other, nxt_letter, boot_id)
