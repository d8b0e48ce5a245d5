"""Reads, bytes (and how many of them FAT) and time for opening a 128 MiB FAT32 ESP and reading
one file through ``updater.fat``: a 1 KiB grubenv (what ``updater status`` needs) and a 13 MB
contiguous initrd (what ``updater kexec`` needs).

    .venv/bin/python benchmarks/bench_fat.py [--cold] [IMAGE]

The image is made as ``images/disk.py`` makes the test ESP (``mkfs.vfat -F 32``: 512-byte
clusters, 258078 of them, a FAT of 1 MiB) with an 8 MB kernel before the initrd, and kept at
IMAGE (default /tmp/bench-esp.img) for the next run. Times are the best of 7 fresh opens on the
host, from its page cache, or with ``--cold`` after dropping the image's cached pages (as the
test VM's kernel drops a block device's on its last close; only this file's, by fadvise)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from updater import fat

ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def make(image: Path) -> None:
    image.unlink(missing_ok=True)
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", "EFI-SYSTEM", "-C", str(image),
                    str(128 * 1024)], check=True, capture_output=True)  # fmt: skip
    subprocess.run(["mmd", "-i", str(image), "::/flatcar"], check=True, env=ENV)
    for rel, size in (("flatcar/vmlinuz-a", 8_000_000), ("flatcar/initrd-a", 13_000_000),
                      ("flatcar/grubenv", 1024)):  # fmt: skip
        subprocess.run(["mcopy", "-i", str(image), "-", f"::/{rel}"], input=os.urandom(size),
                       check=True, env=ENV)  # fmt: skip


def measure(image: Path, rel: str, cold: bool) -> tuple[int, int, int, float]:
    """(reads, bytes read, FAT bytes read, seconds) for a fresh open and one read of ``rel``."""
    reads: list[tuple[int, int]] = []
    fd = os.open(image, os.O_RDONLY)
    if cold:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def reader(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return os.pread(fd, length, offset)

    start = time.perf_counter()
    volume = fat.FatVolume(reader)
    data = volume.read(rel, 64 << 20)
    took = time.perf_counter() - start
    os.close(fd)
    assert data is not None
    geo = volume.geo
    fat_end = geo.fat_offset + geo.fat_bytes
    in_fat = sum(max(0, min(o + n, fat_end) - max(o, geo.fat_offset)) for o, n in reads)
    return len(reads), sum(n for _, n in reads), in_fat, took


def main() -> None:
    args = sys.argv[1:]
    cold = "--cold" in args
    paths = [a for a in args if a != "--cold"]
    image = Path(paths[0] if paths else "/tmp/bench-esp.img")
    if not image.exists():
        make(image)
    for rel in ("flatcar/grubenv", "flatcar/initrd-a"):
        runs = [measure(image, rel, cold) for _ in range(7)]
        reads, total, in_fat, _ = runs[0]
        best = min(r[3] for r in runs)
        how = "cold" if cold else "cached"
        print(f"{rel}: {reads} reads, {total} bytes, {in_fat} of them FAT; best of 7 {how}: "
              f"{best * 1000:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
