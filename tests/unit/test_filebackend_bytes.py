"""The file backend's on-disk formats as bytes: the image trailer and the tries counter (a GRUB
environment block), hostile variants included, and the kexec command line of the file backend.
Expected values are written from the formats in the README, not from the module."""

from __future__ import annotations

import pytest

from updater import filebackend as fb
from updater import fileboot
from updater.config import BootSettings
from updater.errors import DataError

HASH = "ab" * 32


def trailer_bytes(text: str) -> bytes:
    body = b"UPDATER-FILESLOT 1\n" + text.encode()
    return body + b"\0" * (4096 - len(body))


def test_trailer_round_trip_is_the_documented_text() -> None:
    t = fb.Trailer(HASH, 8192, 16384, "3815.2.0")
    assert t.encode() == trailer_bytes(
        f"root_hash={HASH}\nhash_offset=8192\nsize=16384\nversion=3815.2.0\n"
    )
    assert fb.decode_trailer(t.encode(), "x") == t


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\0" * 4096, "no image trailer"),
        (trailer_bytes(f"root_hash={HASH}\n")[:4000], "no image trailer"),
        (trailer_bytes(f"root_hash={HASH}\nhash_offset=8192\nsize=16384\n"), "has keys"),
        (trailer_bytes(f"root_hash={HASH.upper()}\nhash_offset=8192\nsize=16384\nversion=1\n"),
         "malformed"),
        (trailer_bytes(f"root_hash={HASH}\nhash_offset=8193\nsize=16384\nversion=1\n"),
         "4096-byte multiples"),
        (trailer_bytes(f"root_hash={HASH}\nhash_offset=16384\nsize=16384\nversion=1\n"),
         "outside the image"),
        (trailer_bytes(f"root_hash={HASH}\nhash_offset=8192\nsize=16384\nversion=1;rm\n"),
         "malformed"),
        (trailer_bytes(f"root_hash={HASH}\nhash_offset={'4' * 13}096\nsize=16384\nversion=1\n"),
         "out of range"),
        (trailer_bytes("root_hash=\xff"), "not ASCII"),
    ],
)  # fmt: skip
def test_hostile_trailers_are_one_line(block: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        fb.decode_trailer(block, "/images/root.img")
    assert info.value.message.startswith("/images/root.img: ") and "\n" not in info.value.message


def test_counter_is_a_grub_environment_block() -> None:
    block = fb.tries_block(3)
    assert len(block) == 1024 and block.startswith(b"# GRUB Environment Block\n")
    assert b"\nfiles_tries=3\n" in block and block.endswith(b"#")
    assert fb.parse_tries(block, "t") == 3


@pytest.mark.parametrize(
    "block",
    [b"", fb.tries_block(3)[:1000], fb.tries_block(3).replace(b"files_tries=3", b"files_tries=x"),
     fb.tries_block(3).replace(b"files_tries=3\n", b"files_tries=\xd9\xa3"),  # Arabic-Indic 3
     fb.tries_block(3).replace(b"files_tries", b"other_tries")],
)  # fmt: skip
def test_hostile_counters_are_refused(block: bytes) -> None:
    with pytest.raises(DataError):
        fb.parse_tries(block, "t")


def test_kexec_command_line_names_only_the_image_directory() -> None:
    settings = BootSettings(extra_args=("quiet",), panic=5)
    running = "BOOT_IMAGE=/x root=PARTUUID=y console=ttyS1,9600 mount.usr=/dev/mapper/usr"
    assert fileboot.build_cmdline(settings, "/var/lib/images", running) == (
        "rootflags=rw mount.usrflags=ro consoleblank=0 root=LABEL=ROOT panic=5 "
        "console=ttyS1,9600 quiet updater.images=/var/lib/images"
    )
    assert fileboot.build_cmdline(BootSettings(), "/i", "") == (
        "rootflags=rw mount.usrflags=ro consoleblank=0 root=LABEL=ROOT panic=10 "
        "console=ttyS0,115200n8 console=tty0 updater.images=/i"
    )
