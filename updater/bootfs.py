"""Files on the boot partitions: the ESP (kernels, first-boot marker, grubenv) and OEM (grub.cfg).

Three ways in, one small interface (``BootFiles``):
- a mounted directory (the partition's mount point, or ``--esp DIR`` / ``--oem DIR``);
- the ESP partition of a disk or image file, in place (nothing mounted: works on image files and
  on a running system whose ESP is not mounted): read by ``updater.fat``, written through mtools;
- the OEM partition (ext4) of a disk or image file, in place, read-only: by ``updater.ext4``
  (debugfs for features that reader does not implement).

One rule finds them (``esp_of``, ``oem_of``; both at once: ``locate``), for the boot plan and
the grubenv alike: the
directory given on the command line, else the disk's own partition (by label, then by type),
through its mount point when the kernel has it mounted (writing a FAT filesystem underneath
the kernel's driver would corrupt it), else in place.

Writes are crash-safe on every backend: the new contents go to a temporary name in the same
directory, are made durable, and only then replace the old file by a rename, which is synced
too. A power cut leaves the old file or the new one, or on FAT, whose rename rewrites directory
entries and is not atomic, possibly neither under that name, but never a mix of the two and
never damage to another file: ``updater.espenv`` keeps two copies for that reason.

A step that needs several files reads them in one call (``read_first``: for each group of
candidate names, the first that exists), so that what it read is one snapshot.

Paths are relative to the filesystem root (``flatcar/vmlinuz-a``). This module does not know what
the files mean; ``updater.espfiles``, ``updater.cmdline`` and ``updater.grubenv`` do.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from updater import gptformat
from updater.errors import DataError, DeviceError, UpdaterError
from updater.guid import Guid
from updater.records import dataclass

# Writing imports ``updater.atomicfile`` (tempfile) and ``updater.run`` (subprocess) where it
# happens: most commands only read the boot partitions (start-up time).

ESP_TYPE = Guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
MAX_FILE = 512 << 20  # a kernel or initrd on an ESP; nothing read from it is larger


# ``BootFiles`` is an interface for the type checker only (import it under TYPE_CHECKING):
# defining a Protocol at run time would import ``typing`` into every command (start-up time).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any, Protocol

    class BootFiles(Protocol):
        description: str

        def read(self, rel: str) -> bytes | None:
            """The file's bytes, or None when it does not exist."""
            ...

        def head(self, rel: str, length: int) -> bytes | None:
            """The file's first ``length`` bytes (all of it when shorter), or None when it
            does not exist: what a plan that stages nothing needs of a kernel."""
            ...

        def write(self, rel: str, data: bytes) -> None:
            """Replace the file crash-safely (module docstring); DeviceError where read-only."""
            ...


class DirFiles:
    def __init__(self, root: str) -> None:
        self.root = root
        self.description = root

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def read(self, rel: str) -> bytes | None:
        return self.head(rel, -1)

    def head(self, rel: str, length: int) -> bytes | None:
        try:
            with open(self._path(rel), "rb") as f:
                return f.read(length)
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        """Temporary file in the same directory, fsync, rename over ``NAME``, fsync the directory
        (an atomic replacement where the filesystem's rename is, as on ext4)."""
        from updater import atomicfile

        atomicfile.write(self._path(rel), data)


class FatPartitionFiles:
    """A FAT filesystem inside a disk or image file, at ``offset`` bytes and ``size`` bytes long
    (None: to the end of the file). Read by ``updater.fat`` (a few preads, no process), written
    through mtools (``@@`` offset)."""

    def __init__(self, disk: str, offset: int, size: int | None = None) -> None:
        self.disk = disk
        self.offset = offset
        self.size = size
        self.image = f"{disk}@@{offset}" if offset else disk
        self.description = f"{disk} (ESP at byte {offset})" if offset else disk
        # mtools refuses filesystems whose geometry it doubts unless told not to check
        self.env = {"MTOOLS_SKIP_CHECK": "1"}
        self._cache: dict[str, bytes | None] = {}
        self._volume: Any = None  # the parsed filesystem (fat.FatVolume), until a write

    def read(self, rel: str) -> bytes | None:
        # Kernels are read more than once per command (hash, then staging): keep what was read.
        if rel not in self._cache:
            self._cache[rel] = self._read(rel)
        return self._cache[rel]

    def head(self, rel: str, length: int) -> bytes | None:
        if rel in self._cache:
            whole = self._cache[rel]
            return None if whole is None else whole[:length]
        return self._read(rel, length)

    def _read(self, rel: str, head: int | None = None) -> bytes | None:
        from updater import fat  # only the commands that read an ESP in place need it

        try:
            if self._volume is None:
                reader = _RangeReader(self.disk, self.offset, self.size, self.description)
                self._volume = fat.FatVolume(reader.read)
            data: bytes | None = self._volume.read(rel, MAX_FILE, head)
            return data
        except DataError as exc:
            raise DataError(f"{self.description}: {exc.message}") from exc

    def write(self, rel: str, data: bytes) -> None:
        """mcopy to ``NAME.new`` (from stdin: no scratch file, so this works with / read-only),
        make it durable, rename it over ``NAME`` (``-D o``: replace), make that durable."""
        from updater.run import require_tool, run

        require_tool("mcopy", "mtools")
        self._cache.pop(rel, None)
        self._volume = None  # mtools changes the FAT and the directories
        tmp = f"::/{rel}.new"
        run(["mcopy", "-D", "o", "-i", self.image, "-", tmp], input=data, env=self.env)
        _fsync(self.disk)
        run(["mren", "-D", "o", "-i", self.image, tmp, f"::/{rel}"], env=self.env)
        _fsync(self.disk)
        self._cache[rel] = data


class Ext4PartitionFiles:
    """An ext4 filesystem inside a disk or image file, read-only: by ``updater.ext4`` (a few
    preads), or through debugfs for what that reader does not implement."""

    def __init__(self, disk: str, offset: int, size: int | None = None) -> None:
        self.disk = disk
        self.offset = offset
        self.size = size
        self.device = f"{disk}?offset={offset}" if offset else disk
        self.description = f"{disk} (ext4 at byte {offset})" if offset else disk

    def read(self, rel: str) -> bytes | None:
        from updater import ext4  # only the commands that read an OEM partition need it

        try:
            reader = _RangeReader(self.disk, self.offset, self.size, self.description)
            return ext4.Ext4Volume(reader.read).read(rel, MAX_FILE)
        except ext4.Unsupported:
            return self._debugfs(rel)
        except DataError as exc:
            raise DataError(f"{self.description}: {exc.message}") from exc

    def head(self, rel: str, length: int) -> bytes | None:
        data = self.read(rel)  # the OEM partition's files are a few lines
        return None if data is None else data[:length]

    def _debugfs(self, rel: str) -> bytes | None:
        from updater.run import require_tool, run

        require_tool("debugfs", "e2fsprogs")
        proc = run(["debugfs", "-R", f"cat /{rel}", self.device], check=False)
        err = proc.stderr.decode(errors="replace")
        if proc.returncode != 0 or "not found" in err or "Bad magic" in err:
            return None
        return proc.stdout

    def write(self, rel: str, data: bytes) -> None:
        raise DeviceError(f"{self.description} is opened read-only")


class _RangeReader:
    """Reads of one partition's byte range of a disk or image file, each checked to stay in it.
    Each read opens the file anew: a parsed filesystem may outlive the command's other work."""

    def __init__(self, path: str, offset: int, limit: int | None, description: str) -> None:
        self.path, self.offset, self.limit, self.description = path, offset, limit, description
        self.size: int | None = None  # the readable bytes: the limit, within the file's end

    def read(self, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"{self.description}: {exc.strerror or exc}") from exc
        try:
            if self.size is None:
                end = os.lseek(fd, 0, os.SEEK_END) - self.offset
                self.size = end if self.limit is None else min(self.limit, end)
            if self.size < 2048:
                raise DataError("the partition is empty or too small for a filesystem")
            if offset < 0 or length < 0 or offset + length > self.size:
                raise DataError(
                    f"a read at {offset}+{length} leaves the {self.size}-byte partition"
                )
            data = os.pread(fd, length, self.offset + offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise DataError(f"short read at byte {self.offset + offset}")
        return data


def _fsync(path: str) -> None:
    """Flush what mtools wrote through its own descriptor: fsync on any descriptor of the same
    file (or block device) writes back all of its dirty pages."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partition(
    disk: str, table: gptformat.GptTable, label: str, type_guid: Guid | None
) -> tuple[str, int, int] | None:
    """Where the partition labelled ``label`` (or, failing that, of type ``type_guid``) is read:
    (path, byte offset, size in bytes). On a block device that is the kernel's partition node
    at offset 0: the whole disk and its partition nodes have separate page caches, so reading a
    partition through the disk node can return stale data that another tool wrote through the
    partition node (and the other way round)."""
    used = table.used_entries()
    found = [e for e in used if e.name == label] or [e for e in used if e.type_guid == type_guid]
    if not found:
        return None
    entry = found[0]
    size = (entry.last_lba - entry.first_lba + 1) * table.sector_size
    node = partition_node(disk, entry.number)
    if node is not None:
        return node, 0, size
    return disk, entry.first_lba * table.sector_size, size


def partition_node(disk: str, number: int, sys: str = "/sys") -> str | None:
    """/dev/vda3 for (/dev/vda, 3), when ``disk`` is a block device the kernel partitioned."""
    try:
        if not stat.S_ISBLK(os.stat(disk).st_mode):
            return None
    except OSError:
        return None
    name = os.path.basename(os.path.realpath(disk))
    base = os.path.join(sys, "class", "block", name)
    try:
        children = sorted(c for c in os.listdir(base) if c.startswith(name))
    except OSError:
        return None
    for child in children:
        try:
            with open(os.path.join(base, child, "partition")) as f:
                found = int(f.read())
        except (OSError, ValueError):
            continue
        if found == number:
            node = os.path.join(os.path.dirname(os.path.realpath(disk)), child)
            return node if os.path.exists(node) else None
    return None


def mount_point(node: str, mounts: str = "/proc/self/mounts") -> str | None:
    """Where the block device ``node`` is mounted, if it is."""
    try:
        with open(mounts) as f:
            text = f.read()
    except OSError:
        return None
    real = os.path.realpath(node)
    for line in text.splitlines():
        fields = line.split()
        if (
            len(fields) >= 2
            and fields[0].startswith("/dev/")
            and os.path.realpath(fields[0]) == real
        ):
            return fields[1].replace("\\040", " ")
    return None


def esp_of(disk: str, table: gptformat.GptTable, override: str | None = None) -> BootFiles | None:
    """The disk's ESP: ``override`` (a mounted directory) when given, else the EFI-SYSTEM
    partition (module docstring); None when the disk has none."""
    if override:
        return DirFiles(override)
    where = _partition(disk, table, "EFI-SYSTEM", ESP_TYPE)
    if where is None:
        return None
    mounted = mount_point(where[0]) if where[1] == 0 else None
    return DirFiles(mounted) if mounted else FatPartitionFiles(*where)


def oem_of(disk: str, table: gptformat.GptTable, override: str | None = None) -> BootFiles | None:
    """The disk's OEM partition, by the same rule as ``esp_of``; None when it has none."""
    if override:
        return DirFiles(override)
    where = _partition(disk, table, "OEM", None)
    if where is None:
        return None
    mounted = mount_point(where[0]) if where[1] == 0 else None
    return DirFiles(mounted) if mounted else Ext4PartitionFiles(*where)


Found = tuple[str, bytes] | None  # (relative path, bytes) of a file read, None when none exists


class Heads:
    """``files`` seen through its ``head``: each read gives a file's first ``length`` bytes
    (``read_first`` groups that only need to know a file is there, or its first bytes)."""

    def __init__(self, files: BootFiles, length: int) -> None:
        self.files, self.length = files, length
        self.description = files.description

    def read(self, rel: str) -> bytes | None:
        return self.files.head(rel, self.length)

    def head(self, rel: str, length: int) -> bytes | None:
        return self.files.head(rel, min(length, self.length))

    def write(self, rel: str, data: bytes) -> None:
        raise DeviceError(f"{self.description}: opened to read the first bytes of files only")


def read_first(wanted: Sequence[tuple[BootFiles | None, Sequence[str]]]) -> tuple[Found, ...]:
    """For each ``(files, candidates)``: the first candidate that exists, with its bytes (None
    when none does, or ``files`` is None). Errors of the backend (a missing tool, an unreadable
    file) propagate."""
    out: list[Found] = []
    for files, candidates in wanted:
        found: Found = None
        if files is not None:
            for rel in candidates:
                data = files.read(rel)
                if data is not None:
                    found = (rel, data)
                    break
        out.append(found)
    return tuple(out)


@dataclass(frozen=True)
class BootPartitions:
    """The disk's ESP and OEM partition, and the ESP files read when they were found."""

    esp: BootFiles | None
    oem: BootFiles | None
    esp_files: tuple[bytes | None, ...] | None  # as asked for; None when not read or unreadable


def locate(
    disk: str,
    table: gptformat.GptTable,
    esp: str | None = None,
    oem: str | None = None,
    *,
    read: Sequence[str] = (),
) -> BootPartitions:
    """The ESP and the OEM partition by the one rule (``esp_of``, ``oem_of``), and the ESP
    files named in ``read`` (None for each one that does not exist). When they cannot be read
    now (no ESP, no mtools, an I/O error), ``esp_files`` is None: whoever needs them reads
    them later and meets the error there."""
    esp_files = esp_of(disk, table, esp)
    oem_files = oem_of(disk, table, oem)
    contents: tuple[bytes | None, ...] | None = None
    if esp_files is not None and read:
        try:
            found = read_first([(esp_files, (rel,)) for rel in read])
        except (UpdaterError, OSError):
            found = None
        contents = None if found is None else tuple(f[1] if f else None for f in found)
    return BootPartitions(esp_files, oem_files, contents)
