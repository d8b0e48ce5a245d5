"""The ESP's two copies of the GRUB environment block: read them, pick the one GRUB uses, and
rewrite both from the GPT without ever leaving GRUB without a complete copy.

``flatcar/grubenv`` and ``flatcar/grubenv2`` hold the same variables (``updater.grubenv``);
``grub/grub.cfg`` loads the complete one with the higher sequence number (the first on a tie)
and decrements tries only in that one. A rewrite writes every copy through ``BootFiles.write``
(crash-safe per file), the copy in use last, each with the next sequence number: a power cut
at any point leaves the copy in use untouched or the new state complete in the other copy,
however the filesystem below orders its sector writes.

Each slot's root hash in the block is read from the slot's kernel on the ESP for the
configured architecture (x86_64 at 0x40, arm64 at 512), unless the caller knows it already.

This module makes no A/B decision and does not touch the GPT (``updater.state`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from updater import bootfs, grubenv
from updater.errors import UpdaterError
from updater.records import dataclass
from updater.slots import Slot

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from updater.bootfs import BootFiles

COPIES = ("flatcar/grubenv", "flatcar/grubenv2")


@dataclass(frozen=True)
class EspEnv:
    files: BootFiles
    copies: tuple[grubenv.EnvCopy, ...]

    @classmethod
    def find(cls, esp: BootFiles | None) -> EspEnv | None:
        """The copies on ``esp``; None when there is no ESP, it cannot be read (no mtools), or
        it holds no copy at all (the disk does not use the stock-GRUB design)."""
        if esp is None:
            return None
        try:
            found = bootfs.read_first([(esp, (rel,)) for rel in COPIES])
        except UpdaterError:
            return None
        return cls.of(esp, tuple(f[1] if f else None for f in found))

    @classmethod
    def of(cls, esp: BootFiles | None, raws: Sequence[bytes | None]) -> EspEnv | None:
        """The copies already read (``raws``, in the order of ``COPIES``); None as ``find``."""
        if esp is None or all(raw is None for raw in raws):
            return None
        return cls(esp, tuple(grubenv.EnvCopy.of(raw) for raw in raws))

    @property
    def values(self) -> Mapping[str, str]:
        """The variables of the copy GRUB uses; {} when no copy is complete (nothing is then
        reconciled from them; they are rewritten from the GPT)."""
        in_use = grubenv.choose(self.copies)
        return {} if in_use is None else self.copies[in_use].values

    def hashes(self, final: Sequence[Slot], known: Mapping[str, str], arch: str) -> dict[str, str]:
        """Each slot's verity root hash: ``known`` ones as given, the others from the slot's
        kernel on the ESP (written there together with the image, so it is the truth), else what
        a copy already said."""
        from updater import espfiles  # only a rewrite reads kernels; status reads the copies

        out: dict[str, str] = dict(known)
        for s in final:
            if s.letter is None or s.letter in known:
                continue
            key = f"usr_{s.letter.lower()}_hash"
            found = espfiles.usrhash(self.files, s.letter, arch) or self.values.get(key, "")
            if found:
                out[s.letter] = found
        return out

    def sync(
        self, final: Sequence[Slot], known: Mapping[str, str], *, arch: str, panic: int
    ) -> bool:
        """Rewrite the copies from the final slot state; whether anything was written."""
        values = grubenv.slot_vars(final, self.hashes(final, known, arch))
        values[grubenv.PANIC_KEY] = str(panic)
        writes = grubenv.plan_rewrite(self.copies, values)
        for index, block in writes:
            self.files.write(COPIES[index], block)
        return bool(writes)
