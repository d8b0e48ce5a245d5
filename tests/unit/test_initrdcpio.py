"""The newc writer, read back by a small reader written here from the format description."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from updater.cmdline import BootFacts, OemConfig, facts_env
from updater.errors import UsageError
from updater.guid import Guid
from updater.initrdcpio import (
    CpioEntry,
    _header,
    append_archive,
    facts_initrd,
    newc_archive,
    padding_after,
)

FIELDS = (
    "ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check"
).split()
FACTS = BootFacts(
    letter="B",
    partuuid=Guid("e03dd35c-7c2d-4a47-b3fe-27f15780a57c"),
    usrhash="ab" * 32,
    first_boot=True,
    oem=OemConfig(oem_id="qemu"),
)


@dataclass
class Member:
    offset: int
    fields: dict[str, int]
    name: str
    data: bytes


def read_newc(archive: bytes) -> tuple[list[Member], int]:
    """Members up to and including the trailer, and the offset just after it."""
    members: list[Member] = []
    pos = 0
    while True:
        assert pos % 4 == 0, f"header at {pos} is not 4-byte aligned"
        assert archive[pos : pos + 6] == b"070701", f"no newc magic at {pos}"
        raw = archive[pos + 6 : pos + 110]
        assert all(chr(c) in "0123456789ABCDEF" for c in raw), raw
        fields = {f: int(raw[i * 8 : i * 8 + 8], 16) for i, f in enumerate(FIELDS)}
        name_end = pos + 110 + fields["namesize"]
        assert archive[name_end - 1] == 0, "name is not NUL-terminated"
        name = archive[pos + 110 : name_end - 1].decode()
        assert b"\0" not in name.encode()
        data_start = name_end + (-name_end % 4)
        assert archive[name_end:data_start] == b"\0" * (data_start - name_end)
        data_end = data_start + fields["filesize"]
        data = archive[data_start:data_end]
        next_pos = data_end + (-data_end % 4)
        assert archive[data_end:next_pos] == b"\0" * (next_pos - data_end)
        members.append(Member(pos, fields, name, data))
        pos = next_pos
        if name == "TRAILER!!!":
            return members, pos


def test_facts_initrd_members() -> None:
    archive = facts_initrd(FACTS)
    members, end = read_newc(archive)
    assert [m.name for m in members] == [
        "etc",
        "etc/updater",
        "etc/updater/boot-facts.env",
        "TRAILER!!!",
    ]
    etc, updater, env, trailer = members
    assert env.data == facts_env(FACTS).encode()
    assert env.fields["filesize"] == len(env.data)
    assert env.fields["mode"] == stat.S_IFREG | 0o644 and env.fields["nlink"] == 1
    for d in (etc, updater):
        assert d.fields["mode"] == stat.S_IFDIR | 0o755 and d.fields["nlink"] == 2
        assert d.fields["filesize"] == 0 and d.data == b""
    for m in members:
        assert m.fields["mtime"] == m.fields["uid"] == m.fields["gid"] == 0
        assert m.fields["check"] == m.fields["devmajor"] == m.fields["rdevmajor"] == 0
        assert m.fields["devminor"] == m.fields["rdevminor"] == 0
        assert m.fields["namesize"] == len(m.name) + 1
    assert [m.fields["ino"] for m in members] == [1, 2, 3, 0]
    assert trailer.fields["nlink"] == 1 and trailer.fields["mode"] == 0
    assert len(archive) % 512 == 0
    assert archive[end:] == b"\0" * (len(archive) - end)


def test_facts_initrd_is_reproducible() -> None:
    assert facts_initrd(FACTS) == facts_initrd(FACTS)


def test_empty_archive_is_a_trailer_in_one_block() -> None:
    archive = newc_archive([])
    members, end = read_newc(archive)
    assert [m.name for m in members] == ["TRAILER!!!"]
    assert len(archive) == 512 and end == 124


_names = st.lists(
    st.text("abcdefghij_.-", min_size=1, max_size=9).filter(lambda s: s not in (".", "..")),
    min_size=1,
    max_size=3,
).map("/".join)


@given(st.dictionaries(_names, st.binary(max_size=600), max_size=6))
def test_any_files_read_back(files: dict[str, bytes]) -> None:
    entries = [CpioEntry.file(name, data, 0o600) for name, data in files.items()]
    archive = newc_archive(entries)
    members, _ = read_newc(archive)
    assert {m.name: m.data for m in members[:-1]} == files
    assert len(archive) % 512 == 0
    assert [m.fields["ino"] for m in members[:-1]] == list(range(1, len(files) + 1))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda: CpioEntry.file("/etc/x", b""), "must be a relative path"),
        (lambda: CpioEntry.file("", b""), "must be a relative path"),
        (lambda: CpioEntry.file("a\0b", b""), "must be a relative path"),
        (lambda: CpioEntry.file("etc/../x", b""), "plain relative path"),
        (lambda: CpioEntry.file("..", b""), "plain relative path"),
        (lambda: CpioEntry.file("./x", b""), "plain relative path"),
        (lambda: CpioEntry.file("etc/./x", b""), "plain relative path"),
        (lambda: CpioEntry.file(".", b""), "plain relative path"),
        (lambda: CpioEntry.file("etc//x", b""), "plain relative path"),
        (lambda: CpioEntry.file("etc/x/", b""), "plain relative path"),
        (lambda: CpioEntry.file("TRAILER!!!", b""), "plain relative path"),
        (lambda: CpioEntry("dev/null", stat.S_IFCHR | 0o666), "only directories and regular"),
        (lambda: CpioEntry("fifo", stat.S_IFIFO | 0o644), "only directories and regular"),
        # A regular file whose mode has a bit above the file type bits (bit 16).
        (lambda: CpioEntry("x", stat.S_IFREG | 0o644 | 0o200000), "mode 300644 has unknown bits"),
        (lambda: CpioEntry("d", stat.S_IFDIR | 0o755, b"data"), "a directory has no data"),
        (
            lambda: newc_archive([CpioEntry.directory("d"), CpioEntry.directory("d")]),
            "names must be unique",
        ),
    ],
)
def test_refuses_what_the_kernel_would_not_unpack_as_meant(
    bad: Callable[[], object], reason: str
) -> None:
    """Each case is refused by the check meant for it (the message says which)."""
    with pytest.raises(UsageError, match=reason):
        bad()


@pytest.mark.parametrize(
    "mode", [stat.S_IFREG | 0o7777, stat.S_IFREG, stat.S_IFDIR | 0o1777, stat.S_IFDIR]
)
def test_every_permission_bit_is_allowed(mode: int) -> None:
    entry = CpioEntry("x", mode)
    members, _ = read_newc(newc_archive([entry]))
    assert members[0].fields["mode"] == mode


@pytest.mark.parametrize(("size", "pad"), [(0, 0), (1, 3), (2, 2), (3, 1), (4, 0), (118, 2)])
def test_append_archive_aligns_to_four_bytes(size: int, pad: int) -> None:
    first = b"\x1f" * size  # stands for a compressed initrd of odd length
    archive = facts_initrd(FACTS)
    combined = append_archive(first, archive)
    assert padding_after(size) == b"\0" * pad
    assert combined == first + b"\0" * pad + archive
    assert (len(combined) - len(archive)) % 4 == 0


def test_a_field_holds_exactly_32_bits() -> None:
    """newc fields are eight hex digits: 0xFFFFFFFF is the largest value, one more is refused."""
    head = _header(1, stat.S_IFREG | 0o644, 1, 0xFFFFFFFF, b"big")
    assert head[6 + 6 * 8 : 6 + 7 * 8] == b"FFFFFFFF"
    with pytest.raises(UsageError, match="^cpio field value 4294967296 does not fit in 32 bits$"):
        _header(1, stat.S_IFREG | 0o644, 1, 1 << 32, b"big")


def test_member_names_must_be_unique() -> None:
    with pytest.raises(UsageError, match="^cpio member names must be unique$"):
        newc_archive([CpioEntry.directory("etc"), CpioEntry.directory("etc")])
