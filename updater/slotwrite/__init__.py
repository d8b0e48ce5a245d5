"""The slot writer: a signed, zstd-framed USR image into the inactive slot in one verified pass.

Used by ``updater update`` and later by the installer. It knows nothing about TUF or HTTP: it
takes a byte source, the signed facts of the image, the destination and the booted slot, a state
directory for the resume journal and a progress callback. ``writer`` is the order of the steps;
``stream`` the pass itself; ``readback`` the verification of what is on the slot.
"""

from updater.slotwrite.facts import ImageFacts
from updater.slotwrite.region import Region
from updater.slotwrite.source import ByteSource, FileSource
from updater.slotwrite.writer import Phase, Progress, WriteResult, clear_journal, write_image

__all__ = [
    "ByteSource",
    "FileSource",
    "ImageFacts",
    "Phase",
    "Progress",
    "Region",
    "WriteResult",
    "clear_journal",
    "write_image",
]
