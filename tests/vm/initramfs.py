"""Write a tiny initramfs: a newc cpio of a static busybox, its applet links and an /init script.

Written in Python rather than with ``cpio`` so that it needs no root for the /dev/console node
(the kernel opens it for init's stdin/stdout before anything is mounted) and is byte-for-byte
reproducible. It does not compress: the kernel unpacks a plain newc archive.
"""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class Entry:
    name: str  # without a leading slash
    mode: int  # file type and permission bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc(entries: Iterable[Entry]) -> bytes:
    """The SVR4 "new ASCII" cpio format the kernel expects, ending with the TRAILER!!! entry."""
    out = bytearray()
    all_entries = [*entries, Entry("TRAILER!!!", 0)]
    for ino, e in enumerate(all_entries, start=1):
        name = e.name.encode() + b"\0"
        fields = (
            ino,
            e.mode,
            0,
            0,
            2 if stat.S_ISDIR(e.mode) else 1,
            0,
            len(e.data),
            0,
            0,
            e.rdev[0],
            e.rdev[1],
            len(name),
            0,
        )
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += e.data + _pad4(len(e.data))
    return bytes(out)


def directory(name: str) -> Entry:
    return Entry(name, stat.S_IFDIR | 0o755)


def file(name: str, source: Path) -> Entry:
    return Entry(name, stat.S_IFREG | 0o644, source.read_bytes())


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    listed = subprocess.run(
        [str(busybox), "--list"],
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return [a for a in listed.stdout.split() if a != "busybox"]


def busybox_initramfs(
    init_script: str, busybox: Path = BUSYBOX, extra: Iterable[Entry] = ()
) -> bytes:
    """An initramfs whose /init is ``init_script`` (run by busybox sh) with every applet in /bin,
    plus ``extra`` entries (their parent directories must be among them)."""
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "proc", "sys", "tmp", "run")]
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(Entry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    entries += [
        Entry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in busybox_applets(busybox)
    ]
    entries += extra
    entries.append(Entry("init", stat.S_IFREG | 0o755, init_script.encode()))
    return newc(entries)
