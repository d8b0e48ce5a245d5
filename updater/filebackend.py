"""The file backend on disk: the image directory read and changed one durable step at a time.

The names and every rule are ``updater.fileslots`` (pure). This module:

- reads the directory (``read``): only the names the rules know, each ``lstat``-ed (a symlink or
  anything but a regular file is refused), the counter and each image's trailer read with a
  bound, every problem one ``DataError`` line;
- carries out one ``fileslots.Step`` durably (``apply_step``): a rename or unlink followed by an
  fsync of the directory, the counter and the marker written through ``atomicfile`` (temporary
  file, fsync, rename, directory fsync). A power cut between two steps therefore leaves exactly
  one of the states the pure table goes through;
- writes a new image (``write_new``) into ``root-new.img.part`` through the slot writer
  (``updater.slotwrite``: frames checked against their signed hashes, the verity tree against
  the signed root hash, resumable), then appends the trailer and fsyncs file and directory.

Each image file is the release's USR image as published (filesystem, then the dm-verity
superblock and tree at ``hash_offset``) followed by one 4096-byte trailer that names its root
hash: ``UPDATER-FILESLOT 1`` and ``root_hash=``, ``hash_offset=``, ``size=``, ``version=`` lines,
NUL-padded. The trailer travels with the file through every rename, so the initrd always opens
an image with its own hash. It is only as trustworthy as the host filesystem (as the grubenv's
hash is only as trustworthy as the ESP); dm-verity then checks every block against it.

The kernel and initrd of each image are kept beside it, named by its root hash
(``boot/<hash>/vmlinuz``, ``boot/<hash>/initrd``): renames never touch them, and ``kexec`` finds
the kernel of whichever file boots next through that file's trailer.

It does NOT decide anything (``fileslots``), fetch (``updater.fetch``) or boot (the initrd hook
and ``kexec``).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from updater import atomicfile, fileslots, grubenv
from updater.errors import DataError, DeviceError
from updater.fileslots import BROKEN, MARKER, NEW, OLD, PART, ROOT, TRIES, FileState, Step
from updater.records import dataclass

TRAILER_SIZE = 4096
TRAILER_MAGIC = b"UPDATER-FILESLOT 1\n"
TRIES_KEY = "files_tries"  # the counter is a GRUB environment block, so GRUB can read it too
BOOT_DIR = "boot"
IMAGE_NAMES = (ROOT, NEW, OLD, BROKEN)
MAX_IMAGE = 64 * 2**30 + TRAILER_SIZE  # the release format's 64 GiB bound, plus the trailer
_HASH = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9][0-9.]{0,63}")


@dataclass(frozen=True)
class Trailer:
    root_hash: str
    hash_offset: int
    size: int  # bytes of the image before the trailer
    version: str

    def encode(self) -> bytes:
        text = (
            f"root_hash={self.root_hash}\nhash_offset={self.hash_offset}\n"
            f"size={self.size}\nversion={self.version}\n"
        )
        body = TRAILER_MAGIC + text.encode()
        return body + b"\0" * (TRAILER_SIZE - len(body))


def decode_trailer(block: bytes, name: str) -> Trailer:
    """The trailer's facts; DataError naming ``name`` on anything else."""
    if len(block) != TRAILER_SIZE or not block.startswith(TRAILER_MAGIC):
        raise DataError(f"{name}: no image trailer (not written by updater, or cut short)")
    text = block[len(TRAILER_MAGIC) :].rstrip(b"\0")
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{name}: image trailer is not ASCII") from None
    values = dict(line.partition("=")[::2] for line in lines)
    if set(values) != {"root_hash", "hash_offset", "size", "version"}:
        raise DataError(f"{name}: image trailer has keys {sorted(values)}")
    h, off, size = values["root_hash"], values["hash_offset"], values["size"]
    ver = values["version"]
    if not (_HASH.fullmatch(h) and off.isdigit() and size.isdigit() and _VERSION.fullmatch(ver)):
        raise DataError(f"{name}: malformed image trailer")
    if len(off) > 12 or len(size) > 12:
        raise DataError(f"{name}: image trailer sizes are out of range")
    if int(off) % 4096 or int(size) % 4096:
        raise DataError(f"{name}: image trailer sizes are not 4096-byte multiples")
    if not 0 < int(off) < int(size):
        raise DataError(f"{name}: image trailer puts the hash tree outside the image")
    return Trailer(h, int(off), int(size), ver)


@dataclass(frozen=True)
class Image:
    name: str
    bytes: int  # the whole file
    trailer: Trailer | None
    problem: str | None = None  # why there is no trailer


@dataclass(frozen=True)
class Directory:
    path: str
    state: FileState
    images: dict[str, Image]
    tries_problem: str | None = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def next_image(self) -> Image | None:
        """The file the next boot mounts as root.img, as the rules predict."""
        name = fileslots.boots_next(self.state)
        return self.images.get(name) if name else None


def _lstat(path: str) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DeviceError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is not a regular file (a symlink or a directory is refused)")
    return st


def _read_image(path: str, name: str, size: int) -> Image:
    if size > MAX_IMAGE or size % 4096 or size < 2 * TRAILER_SIZE:
        return Image(name, size, None, f"{size} bytes is not a whole image with its trailer")
    try:
        with open(path, "rb") as f:
            f.seek(size - TRAILER_SIZE)
            block = f.read(TRAILER_SIZE)
        trailer = decode_trailer(block, path)
    except DataError as exc:
        return Image(name, size, None, exc.message)
    except OSError as exc:
        raise DeviceError(f"cannot read {path}: {exc.strerror}") from None
    if trailer.size + TRAILER_SIZE != size:
        return Image(name, size, None, f"{path}: the trailer says {trailer.size} bytes")
    return Image(name, size, trailer)


def parse_tries(block: bytes, path: str) -> int:
    if len(block) != grubenv.SIZE:
        raise DataError(f"{path}: {len(block)} bytes, not a {grubenv.SIZE}-byte counter block")
    value = grubenv.parse(block).get(TRIES_KEY)
    if value is None or len(value) != 1 or value not in "0123456789":
        raise DataError(f"{path}: {TRIES_KEY} is {value!r}, not one digit")
    return int(value)


def tries_block(value: int) -> bytes:
    return grubenv.render({TRIES_KEY: str(value)})


def read(path: str) -> Directory:
    """The image directory as the rules see it. A missing directory is a DeviceError; bytes
    that are not what the updater writes are DataErrors, except an image trailer (reported per
    image) and an unreadable counter (reported, and counted as 0: the safe reading)."""
    if not os.path.isdir(path):
        raise DeviceError(f"the image directory {path} does not exist")
    images: dict[str, Image] = {}
    for name in IMAGE_NAMES:
        st = _lstat(os.path.join(path, name))
        if st is not None:
            images[name] = _read_image(os.path.join(path, name), name, st.st_size)
    revert = _lstat(os.path.join(path, MARKER)) is not None
    tries: int | None = None
    problem: str | None = None
    counter = os.path.join(path, TRIES)
    st = _lstat(counter)
    if st is not None:
        try:
            with open(counter, "rb") as f:
                tries = parse_tries(f.read(grubenv.SIZE + 1), counter)
        except (DataError, OSError) as exc:
            problem = exc.message if isinstance(exc, DataError) else str(exc.strerror)
            tries = 0  # the initrd reads an unreadable counter as spent, too
    return Directory(path, FileState(frozenset(images), revert, tries), images, problem)


@contextmanager
def _device(what: str) -> Iterator[None]:
    """An OSError while changing the directory becomes one DeviceError line."""
    try:
        yield
    except OSError as exc:
        raise DeviceError(f"{what}: {exc.strerror or exc}") from None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def apply_step(path: str, step: Step) -> None:
    """One step of a plan, durable before it returns (see the module docstring)."""
    with _device(f"{path}: {step.kind} {step.src}"):
        _apply(path, step)


def _apply(path: str, step: Step) -> None:
    if step.kind == "rename":
        os.rename(os.path.join(path, step.src), os.path.join(path, step.dst))
        fsync_dir(path)
    elif step.kind == "remove":
        Path(path, step.src).unlink(missing_ok=True)
        fsync_dir(path)
    elif step.kind == "set-tries":
        atomicfile.write(os.path.join(path, TRIES), tries_block(step.value), 0o644)
    else:
        atomicfile.write(os.path.join(path, MARKER), b"", 0o644)


def apply_steps(path: str, steps: list[Step]) -> None:
    for step in steps:
        apply_step(path, step)


def boot_files(path: str, root_hash: str) -> tuple[str, str]:
    """Where the kernel and initrd of the image with ``root_hash`` are kept."""
    base = os.path.join(path, BOOT_DIR, root_hash)
    return os.path.join(base, "vmlinuz"), os.path.join(base, "initrd")


def write_boot_files(path: str, root_hash: str, kernel: bytes, initrd: bytes | None) -> None:
    kernel_path, initrd_path = boot_files(path, root_hash)
    with _device(f"cannot write {os.path.dirname(kernel_path)}"):
        os.makedirs(os.path.dirname(kernel_path), mode=0o755, exist_ok=True)
        if initrd is not None:
            atomicfile.write(initrd_path, initrd, 0o644)
        atomicfile.write(kernel_path, kernel, 0o644)
        fsync_dir(os.path.join(path, BOOT_DIR))


def prune_boot_files(directory: Directory) -> list[str]:
    """Remove the kernels of images that no longer exist; returns the hashes removed."""
    keep = {i.trailer.root_hash for i in directory.images.values() if i.trailer}
    base = os.path.join(directory.path, BOOT_DIR)
    removed = []
    try:
        entries = sorted(os.listdir(base))[:256]
    except FileNotFoundError:
        return []
    for entry in entries:
        if _HASH.fullmatch(entry) and entry not in keep:
            for name in ("vmlinuz", "initrd"):
                Path(base, entry, name).unlink(missing_ok=True)
            os.rmdir(os.path.join(base, entry))
            removed.append(entry)
    if removed:
        fsync_dir(base)
    return removed


def prepare_part(path: str, size: int) -> str:
    """``root-new.img.part`` sized for an image of ``size`` bytes and its trailer (sparse). An
    existing one keeps its bytes, so that the slot writer's journal can resume into it."""
    part = os.path.join(path, PART)
    _lstat(part)  # a symlink or a directory in its place is refused
    with _device(f"cannot prepare {part}"):
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            os.ftruncate(fd, size + TRAILER_SIZE)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path)
    return part


def finish_part(path: str, trailer: Trailer) -> None:
    """The trailer after the verified image, then file and directory durable."""
    part = os.path.join(path, PART)
    with _device(f"cannot finish {part}"):
        fd = os.open(part, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.pwrite(fd, trailer.encode(), trailer.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path)
