"""A release into a slot and its boot files onto the ESP, from an in-memory repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from updater import deploy
from updater.errors import SlotError, VerificationError
from updater.records import replace
from updater.slotwrite import Region

from .memrepo import MemoryRepo, make_image


class MemEsp:
    """A BootFiles in memory that records the order of writes."""

    description = "memory ESP"

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.order: list[str] = []

    def read(self, rel: str) -> bytes | None:
        return self.files.get(rel)

    def head(self, rel: str, length: int) -> bytes | None:
        data = self.files.get(rel)
        return None if data is None else data[:length]

    def write(self, rel: str, data: bytes) -> None:
        self.files[rel] = data
        self.order.append(rel)

    def local_copy(self, rel: str, directory: str) -> str:
        raise AssertionError("not used")


def disk(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xee" * size)
    return path


def test_image_kernel_and_initrd_land_where_the_slot_boots_from(tmp_path: Path) -> None:
    repo = MemoryRepo()
    image = make_image(7)
    rel = repo.add("7", image=image, initrd=b"initrd of 7")
    client = repo.client(tmp_path / "meta")
    client.refresh()
    path = disk(tmp_path, 3 * 1024 * 1024)
    # slot B is the second MiB of the file; the first MiB plays the booted slot A
    dest = deploy.SlotDestination(
        "B", Region(str(path), 1 << 20, 1 << 20, "b"), Region(str(path), 0, 1 << 20, "a")
    )
    esp = MemEsp()
    phases: list[str] = []
    done = deploy.deploy(client, rel, dest, esp, state_dir=str(tmp_path / "state"),
                         arch="x86_64", progress=lambda p, d, t: phases.append(p))  # fmt: skip
    raw = path.read_bytes()
    assert raw[1 << 20 : (1 << 20) + len(image.data)] == image.data
    assert raw[: 1 << 20] == b"\xee" * (1 << 20)  # the booted slot is untouched
    assert raw[(1 << 20) + len(image.data) :] == b"\xee" * (len(raw) - (1 << 20) - len(image.data))
    # names from Flatcar's grub.cfg: USR-B boots /flatcar/vmlinuz-b
    assert esp.order == ["flatcar/initrd-b", "flatcar/vmlinuz-b"]
    assert esp.files["flatcar/vmlinuz-b"] == image.kernel
    assert esp.files["flatcar/initrd-b"] == b"initrd of 7"
    assert done.root_hash == image.facts.verity.root_hash and done.version == "7"
    assert {"write", "verify", "boot-files"} <= set(phases)


def test_a_kernel_naming_another_root_hash_is_refused_before_the_esp(tmp_path: Path) -> None:
    repo = MemoryRepo()
    image = make_image(8)
    other = make_image(9)
    rel = repo.add("8", image=replace(image, kernel=other.kernel))
    client = repo.client(tmp_path / "meta")
    client.refresh()
    path = disk(tmp_path, 2 * 1024 * 1024)
    esp = MemEsp()
    with pytest.raises(VerificationError, match="carries root hash .* its image has"):
        deploy.deploy(client, rel, deploy.SlotDestination("A", Region(str(path)), None), esp,
                      state_dir=str(tmp_path / "state"), arch="x86_64")  # fmt: skip
    assert esp.files == {}


def test_the_booted_slot_is_refused(tmp_path: Path) -> None:
    repo = MemoryRepo()
    rel = repo.add("3")
    client = repo.client(tmp_path / "meta")
    client.refresh()
    path = disk(tmp_path, 2 * 1024 * 1024)
    region = Region(str(path), 0, 1 << 20)
    with pytest.raises(SlotError):
        deploy.deploy(client, rel, deploy.SlotDestination("A", region, region), MemEsp(),
                      state_dir=str(tmp_path / "state"), arch="x86_64")  # fmt: skip
    assert path.read_bytes() == b"\xee" * (2 * 1024 * 1024)
