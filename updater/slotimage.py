"""Whether a slot's partition holds an image: a known filesystem signature at its start.

Reads a few bytes of one partition, through the kernel's partition node where there is one (it
does not share the whole disk's page cache, which may hold what the slot contained before an
image was written to it). It does not verify the image (``updater.verityfile`` does).
"""

from __future__ import annotations

import os

from updater import bootfs, gptformat

# Filesystem signatures that mean "this slot holds an image": (offset, magic).
IMAGE_MAGICS = (
    (0, b"hsqs"),  # squashfs
    (1024, b"\xe2\xe1\xf5\xe0"),  # erofs
    (1080, b"\x53\xef"),  # ext2/3/4
    (65600, b"_BHRfS_M"),  # btrfs
)


def holds_image(disk: str, table: gptformat.GptTable, partition: int) -> bool:
    entry = gptformat.entries_by_number(table.entries())[partition]
    ss = table.sector_size
    start = entry.first_lba * ss
    size = (entry.last_lba - entry.first_lba + 1) * ss
    path = bootfs.partition_node(disk, partition) or disk
    if path != disk:
        start = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for offset, magic in IMAGE_MAGICS:
            if offset + len(magic) <= size and os.pread(fd, len(magic), start + offset) == magic:
                return True
    finally:
        os.close(fd)
    return False
