"""The installer's kernel parameters, ``updater.install.KEY=VALUE``, as ``updater install``
options: what a network-boot configuration (an iPXE script, a PXELINUX entry) passes.

| parameter | option |
|---|---|
| ``updater.install.disk=/dev/sda`` | ``--disk`` |
| ``updater.install.repo=URL`` | ``--repo`` |
| ``updater.install.image=PATH`` | ``--image`` |
| ``updater.install.channel=C``, ``.version=V`` | ``--channel``, ``--version`` |
| ``updater.install.oem=ID`` | ``--oem`` |
| ``updater.install.wipe`` (``=1``), ``.both_slots`` | ``--wipe``, ``--both-slots`` |
| ``updater.install.then=kexec`` | ``--then`` |

Pure: the command line in, arguments out. Words are split and unquoted as the kernel does
(``cmdline.split_cmdline``), up to ``--`` (what follows is init's); the last occurrence wins,
as with every kernel parameter. An
unknown ``updater.install.*`` key is refused, so that a misspelt ``wipe`` is never silently
ignored; the values themselves are checked by the option parser, as if typed.
"""

from __future__ import annotations

from updater.cmdline import split_cmdline
from updater.errors import UsageError

PREFIX = "updater.install."
VALUED = {"disk": "--disk", "repo": "--repo", "image": "--image", "channel": "--channel",
          "version": "--version", "oem": "--oem", "then": "--then"}  # fmt: skip
FLAGS = {"wipe": "--wipe", "both_slots": "--both-slots"}
_TRUE = ("", "1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off")


def arguments(cmdline: str) -> list[str]:
    """The ``updater install`` options the kernel command line gives (module docstring)."""
    found: dict[str, str] = {}
    words = split_cmdline(cmdline)
    for word in words[: words.index("--")] if "--" in words else words:
        # The kernel's next_arg: a quote before the name quotes the whole word and the last
        # quote goes; a value that starts with a quote loses it and a last one; its parameq
        # takes - and _ in names alike.
        quoted = word.startswith('"')
        word = word[1:] if quoted else word
        if not word.startswith(PREFIX):
            continue
        key, sep, value = word[len(PREFIX) :].partition("=")
        if value.startswith('"') or quoted:
            value = value.removeprefix('"').removesuffix('"')
        key = key.removesuffix('"').replace("-", "_")
        if key in VALUED and not sep:
            raise UsageError(f"kernel parameter {PREFIX}{key} needs a value ({PREFIX}{key}=...)")
        if key not in VALUED and key not in FLAGS:
            known = ", ".join(PREFIX + k for k in (*VALUED, *FLAGS))
            raise UsageError(f"unknown kernel parameter {PREFIX}{key} (known: {known})")
        found[key] = value
    argv: list[str] = []
    for key, value in found.items():
        if key in VALUED:
            argv += [VALUED[key], value]
        elif value.lower() in _TRUE:
            argv.append(FLAGS[key])
        elif value.lower() not in _FALSE:
            raise UsageError(f"kernel parameter {PREFIX}{key}={value}: say 1 or 0")
    return argv
