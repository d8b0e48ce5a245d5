"""The command line of a slot, OEM grub.cfg parsing, the root hash in the kernel, the facts file."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from updater import cmdline, records
from updater.cmdline import (
    DEFAULT_CONSOLE,
    BootFacts,
    Delivery,
    OemConfig,
    build_cmdline,
    facts_env,
    parse_oem_grub_cfg,
    split_cmdline,
    strip_slot_args,
    usrhash_from_kernel,
)
from updater.errors import DataError, UsageError
from updater.guid import Guid

UUID_A = Guid("7130c94a-213a-4e5a-8e26-6cce9662f132")
UUID_B = Guid("e03dd35c-7c2d-4a47-b3fe-27f15780a57c")
HASH_1 = "0123456789abcdef" * 4
HASH_2 = "f" * 64
COMMON = "rootflags=rw mount.usrflags=ro consoleblank=0 root=LABEL=ROOT"
VERITY_B = f"mount.usr=/dev/mapper/usr verity.usr=PARTUUID={UUID_B}"
EC2 = OemConfig(oem_id="ec2", linux_append="flatcar.autologin", linux_console="console=ttyS0")


def facts(**changes: Any) -> BootFacts:
    base = BootFacts(letter="B", partuuid=UUID_B, usrhash=HASH_1, first_boot=False, oem=OemConfig())
    return records.replace(base, **changes)


CASES = [
    pytest.param(
        facts(),
        f"{COMMON} {DEFAULT_CONSOLE} {VERITY_B} verity.usrhash={HASH_1}",
        id="verity-B",
    ),
    pytest.param(
        facts(letter="A", partuuid=UUID_A, usrhash=None),
        f"{COMMON} {DEFAULT_CONSOLE} mount.usr=PARTUUID={UUID_A}",
        id="no-verity-A",
    ),
    pytest.param(
        facts(first_boot=True, boot_image="/flatcar/vmlinuz-b"),
        f"BOOT_IMAGE=/flatcar/vmlinuz-b {COMMON} {DEFAULT_CONSOLE} "
        f"flatcar.first_boot=detected {VERITY_B} verity.usrhash={HASH_1}",
        id="first-boot-boot-image",
    ),
    pytest.param(
        facts(oem=EC2),
        f"{COMMON} console=ttyS0 flatcar.oem.id=ec2 flatcar.autologin "
        f"{VERITY_B} verity.usrhash={HASH_1}",
        id="oem-everything",
    ),
    pytest.param(
        facts(oem=OemConfig(linux_append="flatcar.autologin  foo=bar")),
        f"{COMMON} {DEFAULT_CONSOLE} flatcar.autologin foo=bar {VERITY_B} verity.usrhash={HASH_1}",
        id="oem-append-without-id",
    ),
    pytest.param(
        facts(oem=OemConfig(oem_id="qemu"), usrhash=None, first_boot=True),
        f"{COMMON} {DEFAULT_CONSOLE} flatcar.first_boot=detected "
        f"flatcar.oem.id=qemu mount.usr=PARTUUID={UUID_B}",
        id="oem-id-only-first-boot-no-verity",
    ),
    pytest.param(
        facts(oem=OemConfig(linux_console="console=ttyS0,115200n8 earlyprintk=ttyS0,115200")),
        f"{COMMON} console=ttyS0,115200n8 earlyprintk=ttyS0,115200 "
        f"{VERITY_B} verity.usrhash={HASH_1}",
        id="oem-console-two-words",
    ),
    pytest.param(
        facts(extra=("systemd.log_level=debug", 'acpi_osi="Windows 2015"'), oem=EC2),
        f"{COMMON} console=ttyS0 flatcar.oem.id=ec2 flatcar.autologin "
        f'systemd.log_level=debug acpi_osi="Windows 2015" {VERITY_B} verity.usrhash={HASH_1}',
        id="extra-args",
    ),
    pytest.param(
        facts(extra=("consoleblank=0", "console=tty0", "panic=10", "panic=10")),
        f"{COMMON} {DEFAULT_CONSOLE} panic=10 {VERITY_B} verity.usrhash={HASH_1}",
        id="extra-repeats-dropped",
    ),
    pytest.param(
        facts(extra=("panic=10", "--", "single", "single")),
        f"{COMMON} {DEFAULT_CONSOLE} panic=10 {VERITY_B} verity.usrhash={HASH_1} -- single single",
        id="usrhash-before-init-args",
    ),
]


@pytest.mark.parametrize(("state", "expected"), CASES)
def test_build_cmdline(state: BootFacts, expected: str) -> None:
    assert build_cmdline(state) == expected


def test_initrd_delivery_is_stable_across_slots_hashes_and_first_boot() -> None:
    variants = [
        facts(),
        facts(letter="A", partuuid=UUID_A, usrhash=HASH_2, boot_image="/flatcar/vmlinuz-a"),
        facts(first_boot=True, boot_image="/flatcar/vmlinuz-b"),
    ]
    lines = {build_cmdline(v, Delivery.INITRD) for v in variants}
    assert lines == {f"{COMMON} {DEFAULT_CONSOLE} mount.usr=/dev/mapper/usr"}


def test_initrd_delivery_keeps_oem_and_extra_but_no_slot_fact() -> None:
    line = build_cmdline(facts(oem=EC2, extra=("panic=10",), first_boot=True), Delivery.INITRD)
    assert line == (
        f"{COMMON} console=ttyS0 flatcar.oem.id=ec2 "
        "flatcar.autologin panic=10 mount.usr=/dev/mapper/usr"
    )
    no_verity = build_cmdline(facts(usrhash=None), Delivery.INITRD)
    assert no_verity == f"{COMMON} {DEFAULT_CONSOLE}"
    assert str(UUID_B) not in line + no_verity


# -- the root hash inside the kernel image ---------------------------------------------------


def kernel_with(text: bytes, offset: int, size: int = 4096) -> bytes:
    data = bytearray(b"\x00" * size)
    data[offset : offset + len(text)] = text
    return bytes(data)


@pytest.mark.parametrize("arch", ["x86_64", "amd64"])
def test_usrhash_x86_64_at_0x40(arch: str) -> None:
    assert usrhash_from_kernel(kernel_with(HASH_1.encode(), 0x40), arch) == HASH_1
    assert usrhash_from_kernel(kernel_with(HASH_1.encode(), 512), arch) is None
    assert usrhash_from_kernel(kernel_with(HASH_1.encode(), 0x40)) == HASH_1  # the default


@pytest.mark.parametrize("arch", ["arm64", "aarch64"])
def test_usrhash_arm64_at_512(arch: str) -> None:
    assert usrhash_from_kernel(kernel_with(HASH_1.encode(), 512), arch) == HASH_1
    assert usrhash_from_kernel(kernel_with(HASH_1.encode(), 0x40), arch) is None


@pytest.mark.parametrize(
    "stored",
    [HASH_1.upper().encode(), b"g" + HASH_1[1:].encode(), HASH_1[:63].encode() + b" ", b"\0" * 64],
)
def test_usrhash_rejects_anything_but_64_lowercase_hex(stored: bytes) -> None:
    assert usrhash_from_kernel(kernel_with(stored, 0x40)) is None


def test_usrhash_short_kernel_and_unknown_arch() -> None:
    assert usrhash_from_kernel(kernel_with(HASH_1.encode(), 0x40)[: 0x40 + 63]) is None
    assert usrhash_from_kernel(b"") is None
    with pytest.raises(UsageError, match=r"unknown architecture 'riscv64' \(known: x86_64, amd64"):
        usrhash_from_kernel(b"", "riscv64")


# -- ESP paths ---------------------------------------------------------------------------------


def test_kernel_and_initrd_candidates() -> None:
    assert cmdline.kernel_candidates("A") == ("flatcar/vmlinuz-a", "coreos/vmlinuz-a")
    assert cmdline.kernel_candidates("B") == ("flatcar/vmlinuz-b", "coreos/vmlinuz-b")
    assert cmdline.kernel_candidates("C") == ("flatcar/vmlinuz-b", "coreos/vmlinuz-b")
    assert cmdline.initrd_candidates("A") == ("flatcar/initrd-a", "coreos/initrd-a")
    assert cmdline.initrd_candidates("B") == ("flatcar/initrd-b", "coreos/initrd-b")
    assert cmdline.FIRST_BOOT_MARKERS == ("flatcar/first_boot", "coreos/first_boot")


# -- OEM grub.cfg --------------------------------------------------------------------------------

FLATCAR_OEM = """\
# Flatcar GRUB settings for EC2

set oem_id="ec2"
set linux_append='flatcar.autologin'  # trailing comment
set linux_console=console=ttyS0,115200n8
"""


def test_parse_oem_typical_file() -> None:
    assert parse_oem_grub_cfg(FLATCAR_OEM) == OemConfig(
        oem_id="ec2", linux_append="flatcar.autologin", linux_console="console=ttyS0,115200n8"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", OemConfig()),
        ('set oem_id="a b"', OemConfig(oem_id="a b")),
        ('set oem_id="x\\"y\\\\z"', OemConfig(oem_id='x"y\\z')),
        ("set oem_id='it''s'", OemConfig(oem_id="its")),
        ("set oem_id=a\\ b", OemConfig(oem_id="a b")),
        ('set "oem_id=quoted#hash"', OemConfig(oem_id="quoted#hash")),
        ("oem_id=bare", OemConfig(oem_id="bare")),
        ("set oem_id=one\nset oem_id=two", OemConfig(oem_id="two")),
        ("set oem_id=one; set oem_id=two", OemConfig(oem_id="two")),
        ("set oem_id=one\nunset oem_id", OemConfig()),
        ("# set oem_id=commented\n  #set oem_id=x", OemConfig()),
        ('set linux_append="a\nb"', OemConfig(linux_append="a\nb")),
        ("set linux_append=a\\\nb", OemConfig(linux_append="ab")),
        ("set other=$x\nset oem_id=z\nsearch --label OEM", OemConfig(oem_id="z")),
        ("set oem_id=a\r\nset linux_append=b\r\n", OemConfig(oem_id="a", linux_append="b")),
    ],
)
def test_parse_oem_quoting(text: str, expected: OemConfig) -> None:
    assert parse_oem_grub_cfg(text) == expected


def test_parse_oem_expands_its_own_variables_in_order() -> None:
    text = """\
set linux_append="$linux_append flatcar.autologin"
set linux_append="${linux_append} console=hvc0"
linux_append=$linux_append\\ x
set oem_id=ec2
set linux_console="console=$oem_id"
"""
    assert parse_oem_grub_cfg(text) == OemConfig(
        oem_id="ec2",
        linux_append=" flatcar.autologin console=hvc0 x",
        linux_console="console=ec2",
    )


def test_parse_oem_ignores_conditional_and_block_assignments() -> None:
    text = """\
set oem_id=top
if [ "$grub_platform" = efi ]; then
    set oem_id=efi
else set linux_console=console=hvc0; fi
function f { set oem_id=function; }
menuentry "x" {
    set linux_append=menu
}
set linux_append=after
"""
    assert parse_oem_grub_cfg(text) == OemConfig(oem_id="top", linux_append="after")


def test_parse_oem_ignores_loops_and_nested_blocks() -> None:
    """Only what runs unconditionally at the top level counts: nothing in a loop body, nothing
    in a nested block, and the top level is found again after each block closes."""
    text = """\
for x in a b; do set oem_id=for; done
while false; do
  if true; then set linux_append=nested; fi
  set linux_console=while
done
until true; do set oem_id=until; done
if a; then
  if b; then set oem_id=inner; fi
  set oem_id=outer
fi
set linux_append=top
"""
    assert parse_oem_grub_cfg(text) == OemConfig(linux_append="top")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A stray closer (a file GRUB itself would refuse) does not hide what follows.
        ("fi\nset oem_id=a", OemConfig(oem_id="a")),
        ("done\ndone\nset oem_id=a", OemConfig(oem_id="a")),
        ("}\nset oem_id=a", OemConfig(oem_id="a")),
        # A block opened and closed on one line leaves the top level as it was.
        ("menuentry x { set oem_id=m; }\nset linux_append=b", OemConfig(linux_append="b")),
        ("set oem_id=a {", OemConfig()),
        ("unset oem_id {\nset linux_append=b\n}", OemConfig()),
    ],
)
def test_parse_oem_block_depth(text: str, expected: OemConfig) -> None:
    assert parse_oem_grub_cfg(text) == expected


@pytest.mark.parametrize("value", ["a\x00b", "a\x1bb", "\x7f"])
def test_parse_oem_refusal_names_line_and_key(value: str) -> None:
    with pytest.raises(DataError, match=r"OEM grub.cfg line 2: linux_append holds a control"):
        parse_oem_grub_cfg(f"set oem_id=x\nset linux_append='{value}'")


def test_parse_oem_keeps_tabs_and_newlines_in_quotes() -> None:
    assert parse_oem_grub_cfg("set linux_append='a\tb'") == OemConfig(linux_append="a\tb")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('set oem_id="$x"', 1),
        ("\nset linux_append=a${b}", 2),
        ("# c\n\nset linux_console='`cmd`'", 3),
        ("set oem_id=\\$x", 1),
        ("set linux_append='$linux_append'", 1),
        ('set linux_append="\\$linux_append"', 1),
        ("set linux_append=$(id)", 1),
        ("set linux_append=$1", 1),
    ],
)
def test_parse_oem_refuses_expansion(text: str, line: int) -> None:
    with pytest.raises(DataError, match=f"line {line}:.*nothing is executed"):
        parse_oem_grub_cfg(text)


@pytest.mark.parametrize("text", ['set oem_id="ec2', "\nset oem_id='ec2", "set oem_id=x\\"])
def test_parse_oem_refuses_broken_quoting(text: str) -> None:
    with pytest.raises(DataError, match="OEM grub.cfg line"):
        parse_oem_grub_cfg(text)


# -- facts file ------------------------------------------------------------------------------------


def test_facts_env() -> None:
    assert facts_env(facts(oem=EC2, first_boot=True)) == (
        f"UPDATER_SLOT=B\nUPDATER_USR=PARTUUID={UUID_B}\nUPDATER_USRHASH={HASH_1}\n"
        "UPDATER_FIRST_BOOT=1\nUPDATER_OEM_ID=ec2\n"
    )
    assert facts_env(facts(letter="A", partuuid=UUID_A, usrhash=None)) == (
        f"UPDATER_SLOT=A\nUPDATER_USR=PARTUUID={UUID_A}\nUPDATER_USRHASH=\n"
        "UPDATER_FIRST_BOOT=0\nUPDATER_OEM_ID=\n"
    )


@pytest.mark.parametrize("oem_id", ["a b", "x;reboot", "$(id)", "a\nUPDATER_SLOT=A", "'q'", "é"])
def test_facts_env_refuses_unsafe_values(oem_id: str) -> None:
    with pytest.raises(DataError, match="UPDATER_OEM_ID"):
        facts_env(facts(oem=OemConfig(oem_id=oem_id)))


@pytest.mark.parametrize(
    "changes",
    [
        {"letter": "b"},
        {"letter": "AB"},
        {"letter": ""},
        {"usrhash": HASH_1.upper()},
        {"usrhash": HASH_1[:-1]},
        {"usrhash": ""},
        {"boot_image": "flatcar/vmlinuz-a"},
        {"boot_image": "/a b"},
        {"extra": ("a b",)},
        {"extra": ("",)},
    ],
)
def test_boot_facts_refuses_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        facts(**changes)


# -- the running command line --------------------------------------------------------------------

FLATCAR_PROC = (
    "BOOT_IMAGE=/flatcar/vmlinuz-a mount.usr=/dev/mapper/usr "
    f"verity.usr=PARTUUID={UUID_A} rootflags=rw mount.usrflags=ro consoleblank=0 "
    "root=LABEL=ROOT console=ttyS0,115200n8 console=tty0 flatcar.first_boot=detected "
    f"flatcar.oem.id=qemu flatcar.autologin verity.usrhash={HASH_1}\n"
)


def test_strip_slot_args_flatcar() -> None:
    assert strip_slot_args(FLATCAR_PROC) == (
        "rootflags=rw",
        "mount.usrflags=ro",
        "consoleblank=0",
        "console=ttyS0,115200n8",
        "console=tty0",
        "flatcar.oem.id=qemu",
        "flatcar.autologin",
    )


def test_strip_slot_args_quotes_bare_keys_drop_and_init_args() -> None:
    line = (
        'initrd=\\flatcar\\initrd-a root=/dev/sda9 rhgb quiet "dyndbg=file x.c +p" '
        'acpi_osi="Windows 2015" usrhash root usr=keep flatcar.first-boot=1 "root=/dev/sda3" '
        '"mount.usr=PARTUUID=x" BOOT_IMAGE="/flatcar/vmlinuz-a" -- quiet root=x\n'
    )
    assert strip_slot_args(line) == (
        '"dyndbg=file x.c +p"',
        'acpi_osi="Windows 2015"',
        "usr=keep",
        "--",
        "quiet",
        "root=x",
    )
    assert strip_slot_args("quiet splash", drop=("splash",)) == ("quiet",)


def test_split_cmdline_like_the_kernel() -> None:
    assert split_cmdline(' a  b="c d"\te "f=g h" i"j k"l\n') == (
        "a",
        'b="c d"',
        "e",
        '"f=g h"',
        'i"j k"l',
    )
    assert split_cmdline('x="unterminated y') == ('x="unterminated y',)
    assert split_cmdline("") == ()


# -- properties ------------------------------------------------------------------------------------


# The slot-specific arguments as the README's `reuse_cmdline` names them, and the default drops.
_SLOT_SPECIFIC = ("mount.usr", "verity.usr", "verity.usrhash", "usrhash", "root", "BOOT_IMAGE",
                  "flatcar.first_boot", "initrd", "rhgb", "quiet")  # fmt: skip


def _slot_word(word: str) -> bool:
    return word.partition("=")[0].replace("-", "_") in {
        k.replace("-", "_") for k in _SLOT_SPECIFIC
    }


_word = st.text("abcdefghijklmnopqrstuvwxyz0123456789._,=-", min_size=1, max_size=12)
_oems = st.builds(
    OemConfig,
    oem_id=st.text("abcdefghijklmnopqrstuvwxyz0123456789-", max_size=8),
    linux_append=st.lists(_word, max_size=3).map(" ".join),
    linux_console=st.sampled_from(["", "console=ttyS0", "console=hvc0 console=tty0"]),
)
_guids = st.binary(min_size=16, max_size=16).map(lambda raw: Guid(bytes=raw))
_facts = st.builds(
    BootFacts,
    letter=st.sampled_from("AB"),
    partuuid=_guids,
    usrhash=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    first_boot=st.booleans(),
    oem=_oems,
    extra=st.lists(_word.filter(lambda w: not _slot_word(w)), max_size=3).map(tuple),
    boot_image=st.none() | st.sampled_from(["/flatcar/vmlinuz-a", "/flatcar/vmlinuz-b"]),
)


@given(_facts)
def test_strip_keeps_exactly_the_slot_independent_words(state: BootFacts) -> None:
    words = split_cmdline(build_cmdline(state))
    assert strip_slot_args(build_cmdline(state)) == tuple(w for w in words if not _slot_word(w))
    assert not any(str(state.partuuid) in w for w in strip_slot_args(build_cmdline(state)))


@given(_facts, _facts)
def test_keeping_running_args_does_not_grow_the_cmdline(old: BootFacts, new: BootFacts) -> None:
    """A kexec that keeps the running arguments, done twice, gives the same line both times."""
    old = records.replace(old, oem=new.oem, extra=new.extra)
    kept = strip_slot_args(build_cmdline(old))
    once = build_cmdline(records.replace(new, extra=kept))
    twice = build_cmdline(records.replace(new, extra=strip_slot_args(once)))
    assert once == twice == build_cmdline(new)


@given(_facts, st.sampled_from("AB"), _guids, st.booleans())
def test_initrd_delivery_ignores_slot_facts(
    state: BootFacts, letter: str, partuuid: Guid, first_boot: bool
) -> None:
    other = records.replace(
        state,
        letter=letter,
        partuuid=partuuid,
        first_boot=first_boot,
        usrhash=None if state.usrhash is None else HASH_2,
        boot_image=f"/flatcar/vmlinuz-{letter.lower()}",
    )
    assert build_cmdline(state, Delivery.INITRD) == build_cmdline(other, Delivery.INITRD)


@given(_facts)
def test_facts_env_is_readable_line_by_line(state: BootFacts) -> None:
    pairs = [line.split("=", 1) for line in facts_env(state).splitlines()]
    env = dict(pairs)
    assert len(pairs) == len(env) == 5
    assert env["UPDATER_SLOT"] == state.letter
    assert env["UPDATER_USR"] == f"PARTUUID={state.partuuid}"
    assert env["UPDATER_USRHASH"] == (state.usrhash or "")
    assert env["UPDATER_FIRST_BOOT"] == ("1" if state.first_boot else "0")


# -- nothing from the OEM partition or the configuration can name the slot ----------------------


def getarg(line: str, key: str) -> str | None:
    """dracut's getarg: every whitespace-separated word, the key compared exactly, the last
    occurrence wins, and a "--" does not stop it."""
    found = None
    for word in line.split():
        name, sep, value = word.partition("=")
        if sep and name == key:
            found = value
    return found


def _spellings(key: str) -> st.SearchStrategy[str]:
    """The ways a word can still set ``key`` for some reader: case, - for _, quotes."""
    return st.tuples(
        st.lists(st.booleans(), min_size=len(key), max_size=len(key)),
        st.booleans(),
        st.sampled_from(['{}', '"{}"', '"{}', '{}"']),
    ).map(
        lambda t: t[2].format(
            "".join(c.upper() if up else c for c, up in zip(key, t[0], strict=True)).replace(
                "_", "-" if t[1] else "_"
            )
            + "=PARTUUID=00000000-0000-0000-0000-000000000000"
        )
    )


_hostile = st.one_of(
    st.sampled_from(cmdline.PROTECTED_KEYS).flatmap(_spellings),
    _word,
    st.just("--"),
)


@given(
    st.lists(_hostile, max_size=6),
    st.lists(_hostile, max_size=6),
    st.lists(_hostile.filter(lambda w: w != "--"), max_size=3),
    st.sampled_from(list(Delivery)),
)
def test_oem_and_extra_never_set_a_protected_argument(
    append: list[str], extra: list[str], console: list[str], delivery: Delivery
) -> None:
    state = facts(
        oem=OemConfig(oem_id="ec2", linux_append=" ".join(append), linux_console=" ".join(console)),
        extra=tuple(extra),
        boot_image="/flatcar/vmlinuz-b",
    )
    line = build_cmdline(state, delivery)
    ours = {
        "mount.usr": "/dev/mapper/usr",
        "verity.usr": f"PARTUUID={UUID_B}" if delivery is Delivery.CMDLINE else None,
        "verity.usrhash": HASH_1 if delivery is Delivery.CMDLINE else None,
        "root": "LABEL=ROOT",
        "BOOT_IMAGE": "/flatcar/vmlinuz-b" if delivery is Delivery.CMDLINE else None,
    }
    for key, value in ours.items():
        assert getarg(line, key) == value, (key, line)
    words = line.split()
    mine = {w for w in build_cmdline(facts(boot_image="/flatcar/vmlinuz-b"), delivery).split()}
    theirs = [w for w in words if cmdline.protected(w)]
    assert set(theirs) <= mine and len(theirs) == len(set(theirs)), line
    given_words = [*console, *append, *extra]
    assert set(cmdline.dropped_args(state, delivery)) == {
        w for w in given_words if w != "--" and cmdline.protected(w)
    }


@pytest.mark.parametrize(
    "word",
    ['"verity.usr=PARTUUID=x"', "VERITY.USR=x", "MOUNT.USRFLAGS=rw", 'ver"ity.usrhash=x', "init=/x",
     "root", "Mount.Usr=PARTUUID=x", "systemd.verity_usr_data=x", "flatcar.first-boot=detected"],
)  # fmt: skip
def test_protected_words_however_written(word: str) -> None:
    assert cmdline.protected(word)
    state = facts(oem=OemConfig(linux_append=f"a=1 -- {word}"), extra=(word,))
    assert word not in build_cmdline(state).split()
    assert cmdline.dropped_args(state) == (word, word)


def test_panic_after_root_and_the_slot_last_before_init_args() -> None:
    line = build_cmdline(facts(panic=10, extra=("x=1", "--", "single")))
    assert line == (
        f"{COMMON} panic=10 {DEFAULT_CONSOLE} x=1 {VERITY_B} verity.usrhash={HASH_1} -- single"
    )


@pytest.mark.parametrize("text", ['set linux_append="a\0b"', "set oem_id=x\x1b[2J"])
def test_parse_oem_refuses_control_characters(text: str) -> None:
    with pytest.raises(DataError, match="control character"):
        parse_oem_grub_cfg(text)


# -- what each refusal says ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('set oem_id="ec2', "OEM grub.cfg line 1: unterminated \" quote"),
        ("\n\nset oem_id='ec2", "OEM grub.cfg line 3: unterminated ' quote"),
        ("set oem_id=x\\", "OEM grub.cfg line 1: backslash at the end"),
        ('set oem_id="$x"', "OEM grub.cfg line 1: oem_id uses $ or ` ('$x'); only $oem_id, "
         "$linux_append, $linux_console are expanded, nothing is executed"),
        ("set linux_console=a\\\nb\nset oem_id='\x01'",
         "OEM grub.cfg line 3: oem_id holds a control character ('\\x01')"),
    ],
)  # fmt: skip
def test_parse_oem_refusal_texts(text: str, message: str) -> None:
    with pytest.raises(DataError) as info:
        parse_oem_grub_cfg(text)
    assert info.value.message == message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"letter": "b"}, "slot letter must be one of A-Z, not 'b'"),
        ({"usrhash": "AB"}, "verity root hash must be 64 lowercase hex digits: 'AB'"),
        ({"boot_image": "a b"}, "boot image must be an absolute path without blanks: 'a b'"),
        ({"boot_image": "/a b"}, "boot image must be an absolute path without blanks: '/a b'"),
        ({"extra": ("a b",)}, "extra argument 'a b' is not exactly one kernel argument"),
        ({"extra": ("",)}, "extra argument '' is not exactly one kernel argument"),
    ],
)
def test_boot_facts_refusal_texts(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as info:
        facts(**changes)
    assert info.value.message == message


def test_boot_facts_accept_their_limits() -> None:
    assert facts(letter="Z", boot_image="/x", usrhash=None, extra=('a="b c"',)).letter == "Z"


def test_facts_env_refusal_text() -> None:
    with pytest.raises(DataError) as info:
        facts_env(facts(oem=OemConfig(oem_id="a b")))
    assert info.value.message == (
        "UPDATER_OEM_ID value 'a b' has characters the initrd cannot read safely"
    )
    assert info.value.hint == "allowed: letters, digits and . _ : , / + = -"
    assert facts_env(facts(oem=OemConfig(oem_id="A-z0.9_:,/+="))).endswith(
        "UPDATER_OEM_ID=A-z0.9_:,/+=\n"
    )


@pytest.mark.parametrize(
    ("word", "is_protected"),
    [
        ("root=x", True), ("ROOT=x", True), ('"root"=x', True), ('r"oo"t=x', True),
        ("mount-usr=x", False), ("mount.usr", True), ("systemd.verity_anything=1", True),
        ("systemd.verity", True), ("rootwait", False), ("usr=x", False), ("x=root", False),
        ("flatcar.first-boot=1", True), ("init=/bin/sh", True), ("rdinit", True),
    ],
)  # fmt: skip
def test_protected_words(word: str, is_protected: bool) -> None:
    assert cmdline.protected(word) is is_protected


# --- GRUB's reading of an OEM grub.cfg: words after then/else/do, comments, line numbers -------


@pytest.mark.parametrize("keyword", ["then", "else", "do"])
def test_parse_oem_assignment_after_a_keyword_on_a_block_line(keyword: str) -> None:
    """`if x; then set a=b; fi` is a conditional assignment (ignored), but the keyword alone in
    front of a top-level command is dropped as GRUB's parser does, with or without `set`."""
    for text in (f"{keyword} set linux_append=a\n", f"{keyword} linux_append=a\n"):
        assert parse_oem_grub_cfg(text) == OemConfig(linux_append="a")


def test_parse_oem_commands_that_are_not_assignments() -> None:
    """`set` alone lists variables, `echo a=b` prints: neither assigns (GRUB)."""
    text = "set linux_append=a\nset\necho linux_append=b\n"
    assert parse_oem_grub_cfg(text) == OemConfig(linux_append="a")


@pytest.mark.parametrize(
    "text",
    [
        "# don't edit: written by the provider\nset linux_append=a\n",
        "  set linux_append=a  # it's a comment\n",
        "\tlinux_append=a\n",
    ],
)
def test_parse_oem_comments_and_leading_blanks(text: str) -> None:
    """`#` starts a comment only at a word's start (a quote inside it means nothing); blanks
    before the first word are no word."""
    assert parse_oem_grub_cfg(text) == OemConfig(linux_append="a")


def test_parse_oem_hash_inside_a_word_is_literal() -> None:
    assert parse_oem_grub_cfg("set linux_append=a#b\n") == OemConfig(linux_append="a#b")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("\n\nlinux_append=$x\n", 3),
        ("set oem_id=a\n\nset \\\n linux_append=$x\n", 3),
    ],
)
def test_parse_oem_refusal_names_the_commands_first_line(text: str, line: int) -> None:
    with pytest.raises(DataError, match=f"^OEM grub.cfg line {line}: linux_append uses"):
        parse_oem_grub_cfg(text)


def test_usrhash_bytes_that_are_not_ascii_are_no_hash() -> None:
    kernel = bytearray(kernel_with(b"a" * 64, 0x40))
    kernel[0x40 + 10] = 0xFF
    assert cmdline.usrhash_from_kernel(bytes(kernel)) is None


def test_strip_slot_args_keeps_names_that_only_contain_a_slot_key() -> None:
    """A name is a slot key only as a whole word before `=` (the kernel's parameq compares whole
    names): letters in front of or after `root`, `usr` or `verity.usrhash` make another name."""
    line = "Xroot=/dev/sda1 rootX=1 verity.usrhashX=ab Xusr=/dev/sda3 usrX"
    assert cmdline.strip_slot_args(line) == tuple(line.split())


def test_strip_slot_args_drops_a_quoted_bare_key() -> None:
    """The kernel skips the quotes around a bare word: `"flatcar.first_boot"` is the flag."""
    assert cmdline.strip_slot_args('"flatcar.first_boot" console=tty0') == ("console=tty0",)


# --- the words of several sources ---------------------------------------------------------------


def test_oem_words_are_kept_as_grub_expands_them() -> None:
    """GRUB repeats a word the OEM file repeats; only ``extra`` is deduplicated."""
    oem = OemConfig(linux_append="console=ttyS1 console=ttyS1")
    assert "console=ttyS1 console=ttyS1" in build_cmdline(facts(oem=oem))


def test_init_arguments_of_two_oem_sources_are_both_kept() -> None:
    oem = OemConfig(linux_console="console=ttyS1 -- x", linux_append="-- x")
    assert build_cmdline(facts(oem=oem)).endswith(" -- x x")


def test_extra_init_arguments_that_differ_from_the_oem_ones_are_appended() -> None:
    oem = OemConfig(linux_append="-- x")
    line = build_cmdline(facts(oem=oem, extra=("--", "y")))
    assert line.endswith(" -- x y")
    kept = build_cmdline(facts(oem=oem, extra=("--", "x", "y")))
    assert kept.endswith(" -- x y")  # a running line that already had x
