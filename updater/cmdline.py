"""The kernel command line of a slot, built the way Flatcar's grub.cfg builds it, as plain data.

Pure: strings and bytes in, strings out. This module does not read the ESP, the OEM partition,
the kernel file or /proc/cmdline, and it never executes GRUB script: the OEM ``grub.cfg`` is read
as data (three assignments), anything that would need GRUB to evaluate it is refused.

Words that come from elsewhere (the OEM partition's ``linux_append`` and ``linux_console``, the
configuration's ``extra_args``, kept running arguments) can never name the slot or its root of
trust: every word whose key is one of ``PROTECTED_KEYS`` (compared without quotes, case or the
``-``/``_`` difference, before and after a ``--``) is dropped, and ``dropped_args`` lists them
for the caller to log. The slot's own arguments come last besides, because dracut's ``getarg``
takes the last occurrence of a key and does not stop at ``--``.

Two deliveries of the slot facts (partition, verity root hash, first boot):

- ``Delivery.CMDLINE``: exactly what GRUB puts on the command line today.
- ``Delivery.INITRD``: the command line stays the same across slots and updates (the direction of
  Flatcar issue #624, for measured boot); the moving facts travel in a small cpio appended to the
  initrd (``updater.initrdcpio``) as the ``facts_env`` file.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum

from updater.errors import DataError, UsageError
from updater.guid import Guid
from updater.records import dataclass

DEFAULT_CONSOLE = "console=ttyS0,115200n8 console=tty0"
FIRST_BOOT_MARKERS = ("flatcar/first_boot", "coreos/first_boot")
# Arguments that name the booted slot or its kernel; never carried over to another slot.
SLOT_KEYS = ("mount.usr", "verity.usr", "verity.usrhash", "usrhash", "root", "BOOT_IMAGE",
             "flatcar.first_boot", "initrd")  # fmt: skip
# Where the root hash sits inside the kernel image (Flatcar's build writes it there and its GRUB
# reads it back): x86_64 in the unused part of the boot sector, arm64 after the 512-byte header.
USRHASH_OFFSETS = {"x86_64": 0x40, "amd64": 0x40, "arm64": 512, "aarch64": 512}
USRHASH_LEN = 64
USRHASH_END = max(USRHASH_OFFSETS.values()) + USRHASH_LEN  # what a kernel's head must hold
# Keys that no word from the OEM partition, the configuration or the running command line may
# set: the slot, its verity data and root hash, how / and /usr are mounted, what runs as init,
# and the first-boot flag. systemd's own names for the same facts are included.
PROTECTED_KEYS = (*SLOT_KEYS, "init", "rdinit", "rootfstype", "rootflags", "mount.usrfstype",
                  "mount.usrflags", "roothash", "systemd.verity", "systemd.verity_root_data",
                  "systemd.verity_root_hash", "systemd.verity_root_options",
                  "systemd.verity_usr_data", "systemd.verity_usr_hash",
                  "systemd.verity_usr_options", "systemd.usr_what", "systemd.usr_fstype",
                  "systemd.usr_options")  # fmt: skip

# The patterns of this module are strings, compiled by ``re`` on first use (and cached there):
# a command compiles only those it matches, not every one at import (start-up time).
_HASH = r"[0-9a-f]{64}"
_SAFE = r"[A-Za-z0-9._:,/+=-]*"  # no blanks, quotes or shell specials
_OEM_KEYS = ("oem_id", "linux_append", "linux_console")


@dataclass(frozen=True)
class OemConfig:
    oem_id: str = ""
    linux_append: str = ""
    linux_console: str = ""


def parse_oem_grub_cfg(text: str) -> OemConfig:
    """The ``oem_id``, ``linux_append`` and ``linux_console`` assignments of an OEM grub.cfg.

    Read with GRUB's quoting (double quotes, single quotes, backslash, bare words, ``#``
    comments); the later assignment wins, ``unset`` clears. Only top-level assignments count:
    one inside ``if``/``for``/``while``/``{ }`` depends on GRUB evaluating the condition, so it is
    ignored. A value may use these three variables (``set linux_append="$linux_append x"``, as
    Flatcar's documentation suggests), expanded from what was read so far; any other ``$`` or a
    backquote is refused, because only running GRUB could tell what it means. A value with a
    control character other than a blank (a NUL, an escape) is refused too: no kernel argument
    can carry it. Every refusal is a DataError naming the line: the file is data from a partition.
    """
    values = {key: "" for key in _OEM_KEYS}
    depth = 0
    # The generator reads one command at a time, so `values` holds the earlier assignments when
    # it expands a reference, as in GRUB.
    for words, line in _grub_commands(text, values):
        while words and words[0] in ("then", "else", "do"):  # `if x; then set a=b; fi`
            words = words[1:]
        if not words:
            continue
        head, opens = words[0], words.count("{") - words.count("}")
        if head in ("if", "while", "until", "for"):
            depth += 1
        elif head in ("fi", "done"):
            depth -= 1
        elif depth == 0 and opens == 0 and head == "unset":
            values.update({w: "" for w in words[1:] if w in values})
        elif depth == 0 and opens == 0:
            assignment = words[1] if head == "set" and len(words) > 1 else head
            key, sep, value = assignment.partition("=")
            if sep and key in values:
                if "$" in value or "`" in value:
                    raise DataError(
                        f"OEM grub.cfg line {line}: {key} uses $ or ` ({value!r}); only "
                        f"${', $'.join(_OEM_KEYS)} are expanded, nothing is executed"
                    )
                if any(not c.isprintable() and not c.isspace() for c in value):
                    raise DataError(
                        f"OEM grub.cfg line {line}: {key} holds a control character ({value!r})"
                    )
                values[key] = value
        depth = max(depth + opens, 0)
    return OemConfig(**values)


# One GRUB script token. Single quotes are literal; inside double quotes a backslash escapes only
# $ " \ and newline (GRUB's lexer); outside quotes it escapes any character, and a backslash
# before a newline joins the lines ("join" tokens change nothing but the line number).
_TOKEN = (
    r"""
    (?P<join>\\\n)
    | (?P<blank>[^\S\n]+)
    | (?P<end>[\n;])
    | '(?P<single>[^']*)'
    | "(?P<double>(?:\\.|[^"\\])*)"
    | \\(?P<escape>.)
    | (?P<plain>[^\s;'"\\]+)
    | (?P<bad>.)
    """
)
_DOUBLE_PART = r'\\([$"\\\n])|\$\{(\w+)\}|\$(\w+)'  # escape or variable
_VARIABLE = r"\$\{(\w+)\}|\$(\w+)"


@functools.cache
def _grub_patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """The tokenizer's patterns, compiled once, by the first command that reads a GRUB script."""
    return re.compile(_TOKEN, re.X | re.S), re.compile(_DOUBLE_PART), re.compile(_VARIABLE)


def _grub_commands(text: str, variables: Mapping[str, str]) -> Iterable[tuple[list[str], int]]:
    """Split GRUB script into commands (lists of unquoted words) with their first line number.
    References to ``variables`` outside single quotes are expanded; others are left as text."""

    token, double_part, variable = _grub_patterns()

    def expand(m: re.Match[str]) -> str:
        if m.re is double_part and m[1] is not None:
            return m[1].strip("\n")  # an escaped character; backslash-newline joins lines
        name = m[m.lastindex or 0]
        return variables[name] if name in variables else m[0]

    words: list[str] = []
    word: str | None = None  # None between words: only there does `#` start a comment
    line = start = 1
    pos = 0
    while pos < len(text):
        if word is None and text[pos] == "#":
            pos = text.find("\n", pos)
            pos = len(text) if pos < 0 else pos
            continue
        m = token.match(text, pos)
        assert m is not None  # the last alternative matches any character
        kind, value = m.lastgroup, m.group(m.lastgroup or 0)
        if kind == "bad":
            what = f"unterminated {value} quote" if value in "'\"" else "backslash at the end"
            raise DataError(f"OEM grub.cfg line {line}: {what}")
        if kind in ("blank", "end") and word is not None:
            words.append(word)
            word = None
        if kind == "end" and words:
            yield words, start
            words = []
        elif kind in ("double", "single", "escape", "plain"):
            if word is None and not words:
                start = line
            if kind in ("double", "plain"):
                value = (double_part if kind == "double" else variable).sub(expand, value)
            word = (word or "") + value
        line += m.group().count("\n")
        pos = m.end()
    if word is not None:
        words.append(word)
    if words:
        yield words, start


def usrhash_from_kernel(data: bytes, arch: str = "x86_64") -> str | None:
    """The verity root hash stored in a kernel image, or None (image without verity).

    GRUB appends ``verity.usrhash=`` only when all 64 bytes are lowercase hex; so does this.
    """
    if arch not in USRHASH_OFFSETS:
        raise UsageError(f"unknown architecture {arch!r} (known: {', '.join(USRHASH_OFFSETS)})")
    offset = USRHASH_OFFSETS[arch]
    raw = data[offset : offset + USRHASH_LEN]
    text = raw.decode("ascii", errors="replace")
    return text if re.fullmatch(_HASH, text) else None


def kernel_candidates(letter: str) -> tuple[str, ...]:
    """ESP-relative kernels for a slot. Like grub.cfg: USR-A gets ``-a``, anything else ``-b``;
    images older than the rename keep them under ``coreos/``."""
    suffix = "a" if letter.upper() == "A" else "b"
    return (f"flatcar/vmlinuz-{suffix}", f"coreos/vmlinuz-{suffix}")


def initrd_candidates(letter: str) -> tuple[str, ...]:
    """ESP-relative separate initrds (the project's test image has one per slot; Flatcar embeds
    the initrd in the kernel, and then none of these exists)."""
    suffix = "a" if letter.upper() == "A" else "b"
    return (f"flatcar/initrd-{suffix}", f"coreos/initrd-{suffix}")


@dataclass(frozen=True)
class BootFacts:
    """Everything that decides the command line of one boot. Checked on construction, because
    these strings end up on a kernel command line and in a file the initrd reads."""

    letter: str
    partuuid: Guid
    usrhash: str | None
    first_boot: bool
    oem: OemConfig
    extra: tuple[str, ...] = ()
    boot_image: str | None = None
    panic: int | None = None  # seconds before a panicked kernel reboots (``panic=N``)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z]", self.letter):
            raise UsageError(f"slot letter must be one of A-Z, not {self.letter!r}")
        if self.usrhash is not None and not re.fullmatch(_HASH, self.usrhash):
            raise UsageError(f"verity root hash must be 64 lowercase hex digits: {self.usrhash!r}")
        if self.boot_image is not None and not re.fullmatch(r"/\S+", self.boot_image):
            raise UsageError(
                f"boot image must be an absolute path without blanks: {self.boot_image!r}"
            )
        for word in self.extra:
            if split_cmdline(word) != (word,):
                raise UsageError(f"extra argument {word!r} is not exactly one kernel argument")


class Delivery(StrEnum):
    CMDLINE = "cmdline"
    INITRD = "initrd"


def build_cmdline(facts: BootFacts, delivery: Delivery = Delivery.CMDLINE) -> str:
    """The kernel command line: Flatcar's words, with the slot's own arguments last.

    1. ``BOOT_IMAGE=`` (GRUB's linux loader puts the kernel path in front of every command line);
    2. ``rootflags=rw mount.usrflags=ro consoleblank=0 root=LABEL=ROOT``, ``panic=N`` when set,
       the console, the first boot flag, ``flatcar.oem.id=``, the OEM's ``linux_append``
       (grub.cfg's ``$linux_cmdline``);
    3. ``extra`` (the project's configuration, or kept running arguments);
    4. the slot: ``mount.usr=/dev/mapper/usr verity.usr=PARTUUID=<uuid>
       verity.usrhash=<hash>`` or, without verity, ``mount.usr=PARTUUID=<uuid>``. Flatcar's
       GRUB puts the first two in front; here they come last, as in ``grub/grub.cfg``, so that
       a reader that takes the last occurrence (dracut's ``getarg``) always sees the slot's own.
       They go before a ``--``, though: the kernel hands every word after ``--`` to init.

    Words from the OEM partition and ``extra`` whose key is protected (module docstring) are
    left out (``dropped_args`` lists them). With ``Delivery.INITRD`` nothing slot-specific is
    emitted (not even ``BOOT_IMAGE``, which names ``vmlinuz-a`` or ``-b``); verity boots still
    get ``mount.usr=/dev/mapper/usr``. Exact repeats of earlier words in ``extra`` are dropped so
    that keeping the running arguments does not grow the command line by one copy per kexec.
    """
    return " ".join(_arrange(facts, delivery)[0])


def dropped_args(facts: BootFacts, delivery: Delivery = Delivery.CMDLINE) -> tuple[str, ...]:
    """The words from the OEM partition or ``extra`` that ``build_cmdline`` leaves out because
    they would set a protected argument (for the caller's log line)."""
    return tuple(_arrange(facts, delivery)[1])


def protected(word: str) -> bool:
    """Whether a command-line word sets (or names, when bare) a protected key, however it is
    written: quotes anywhere in the key, any case, ``-`` for ``_``."""
    key = word.replace('"', "").partition("=")[0].replace("-", "_").lower()
    return key in _PROTECTED or key.startswith("systemd.verity")


_PROTECTED = frozenset(k.replace("-", "_").lower() for k in PROTECTED_KEYS)


def _arrange(facts: BootFacts, delivery: Delivery) -> tuple[list[str], list[str]]:
    oem = facts.oem
    per_slot = delivery is Delivery.CMDLINE
    words: list[str] = []
    init: list[str] = []  # the words after a "--": init's arguments
    separated = False
    dropped: list[str] = []

    def add(candidates: Iterable[str], *, dedupe: bool = False) -> None:
        """One source's words: those before its own "--" are kernel arguments, those after it
        init's; either way a protected word is dropped."""
        nonlocal separated
        kernel, tail, has_tail = _split_init(list(candidates))
        dropped.extend(w for w in (*kernel, *tail) if protected(w))
        for word in kernel:
            if not protected(word) and (not dedupe or word not in words):
                words.append(word)
        theirs = [w for w in tail if not protected(w)]
        if dedupe and init and theirs[: len(init)] == init:
            theirs = theirs[len(init) :]  # kept from a running line that already had them
        init.extend(theirs)  # init's arguments are not ours to deduplicate otherwise
        separated = separated or has_tail

    if per_slot and facts.boot_image:
        words.append(f"BOOT_IMAGE={facts.boot_image}")
    words += ["rootflags=rw", "mount.usrflags=ro", "consoleblank=0", "root=LABEL=ROOT"]
    if facts.panic is not None:
        words.append(f"panic={facts.panic}")
    # GRUB expands these variables unquoted, so their values are split into words.
    add((oem.linux_console or DEFAULT_CONSOLE).split())
    if per_slot and facts.first_boot:
        words.append("flatcar.first_boot=detected")
    if oem.oem_id:
        add(f"flatcar.oem.id={oem.oem_id}".split())
    add(oem.linux_append.split())
    add(facts.extra, dedupe=True)
    if facts.usrhash is not None:
        words.append("mount.usr=/dev/mapper/usr")
        if per_slot:
            words += [f"verity.usr=PARTUUID={facts.partuuid}", f"verity.usrhash={facts.usrhash}"]
    elif per_slot:
        words.append(f"mount.usr=PARTUUID={facts.partuuid}")
    if separated:
        words += ["--", *init]
    return words, dropped


def _split_init(words: list[str]) -> tuple[list[str], list[str], bool]:
    if "--" not in words:
        return words, [], False
    at = words.index("--")
    return words[:at], words[at + 1 :], True


def facts_env(facts: BootFacts) -> str:
    """The facts file for the secondary initrd: ``KEY=value`` lines of safe characters only, so
    the initrd reads it with ``while IFS== read -r key value`` and never sources or evals it."""
    pairs = {
        "UPDATER_SLOT": facts.letter,
        "UPDATER_USR": f"PARTUUID={facts.partuuid}",
        "UPDATER_USRHASH": facts.usrhash or "",
        "UPDATER_FIRST_BOOT": "1" if facts.first_boot else "0",
        "UPDATER_OEM_ID": facts.oem.oem_id,
    }
    for key, value in pairs.items():
        if not re.fullmatch(_SAFE, value):
            raise DataError(
                f"{key} value {value!r} has characters the initrd cannot read safely",
                hint="allowed: letters, digits and . _ : , / + = -",
            )
    return "".join(f"{key}={value}\n" for key, value in pairs.items())


def split_cmdline(text: str) -> tuple[str, ...]:
    """Words of a kernel command line as the kernel's ``next_arg`` splits them: at blanks outside
    double quotes, where a quote anywhere in a word toggles quoting (``a="b c"``, ``"a=b c"``).
    Words keep their quotes, so joining them with spaces gives the same command line back."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c.isspace() and not quoted:
            if current:
                words.append("".join(current))
                current = []
            continue
        quoted ^= c == '"'
        current.append(c)
    if current:
        words.append("".join(current))
    return tuple(words)


def _key(word: str) -> str:
    # The kernel skips a leading quote before the name; it (parameq) and systemd treat - and _ in
    # names alike, so flatcar.first-boot= would be the same flag.
    return word.lstrip('"').partition("=")[0].rstrip('"').replace("-", "_")


def strip_slot_args(cmdline: str, drop: Iterable[str] = ("rhgb", "quiet")) -> tuple[str, ...]:
    """The words of a running command line without anything slot-specific (``SLOT_KEYS``, as
    ``key=value`` or bare) and without the ``drop`` flags: the arguments to keep across a kexec.
    ``--`` and init's arguments after it are kept as they are."""
    unwanted = {_key(k) for k in (*SLOT_KEYS, *drop)}
    words = split_cmdline(cmdline)
    end = words.index("--") if "--" in words else len(words)
    kept = tuple(w for w in words[:end] if _key(w) not in unwanted)
    return kept + words[end:]
