"""Walk the code path of one ``updater kexec`` on a disk image and count how it moves between
files: how often control enters each file, leaves it and comes back.

    .venv/bin/python benchmarks/walk_kexec.py [--json]

A real ``updater --disk IMG --booted A kexec`` (set-active B first) runs in-process on a sparse
Flatcar-layout image with a FAT ESP (mtools) and an ext4 OEM partition, with logging fakes for
kexec and systemctl on PATH, under ``sys.setprofile``. Every Python call and return that crosses
from one file of the ``updater`` package to another is a step of the walk:

- a *stay* is a stretch of the walk in one file; *files* counts the distinct ones;
- a *climb back up* is a return into a file (control goes back to the caller's file);
- a *return to a file already left* is a stay in a file that was visited before;
- *entered by a call* counts, per file, how often a call (not a return) came into it.

Two views: every module of the package, and the corridor alone, that is without the pure
modules and leaf helpers a call only passes through (``slots``, ``cmdline``, ``grubenv``,
``gptformat``, ``initrdcpio``, ``config``, ``contracts``, ``jsonout``, ``errors``, ``run``,
``debug``, ``log``, and the filesystem readers ``fat`` and ``ext4``, which parse what the
``bootfs`` adapter reads for them, as ``gptformat`` does for ``gpt``):
calls into those count as part of the caller's stay. Works on any version of the package that
has ``updater.cli.main``, so that a change can be measured before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

PURE = {
    "slots", "cmdline", "grubenv", "gptformat", "initrdcpio", "config", "contracts", "jsonout",
    "errors", "run", "debug", "log", "__init__", "fat", "ext4",
}  # fmt: skip
FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "$(dirname "$0")/log"
exit 0
"""


def make_disk(work: Path) -> Path:
    from updater import gpt, layout

    disk = work / "disk.img"
    mib = layout.MiB
    layout.create_disk(
        layout.flatcar_layout(usr_size=8 * mib, esp_size=4 * mib, oem_size=4 * mib,
                              root_size=4 * mib), str(disk))  # fmt: skip
    with gpt.locked(str(disk), writable=False) as d:
        by = {e.name: e for e in gpt.read_table(d).used_entries()}
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    esp = f"{disk}@@{by['EFI-SYSTEM'].first_lba * 512}"
    subprocess.run(["mformat", "-i", esp, "::"], check=True, env=env)
    subprocess.run(["mmd", "-i", esp, "::/flatcar"], check=True, env=env)
    for letter, fill in (("a", b"a"), ("b", b"b")):
        kernel = bytearray(8192)
        kernel[0x40 : 0x40 + 64] = fill * 64
        (work / f"vmlinuz-{letter}").write_bytes(bytes(kernel))
        (work / f"initrd-{letter}").write_bytes(b"initrd")
        for name in (f"vmlinuz-{letter}", f"initrd-{letter}"):
            subprocess.run(["mcopy", "-i", esp, str(work / name), f"::/flatcar/{name}"],
                           check=True, env=env)  # fmt: skip
    oem_dir = work / "oem"
    oem_dir.mkdir()
    (oem_dir / "grub.cfg").write_text('set oem_id="qemu"\nset linux_append="x=1"\n')
    oem = by["OEM"]
    size_kib = (oem.last_lba - oem.first_lba + 1) * 512 // 1024
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "OEM", "-d", str(oem_dir), "-E",
                    f"offset={oem.first_lba * 512}", str(disk), f"{size_kib}k"],
                   check=True)  # fmt: skip
    return disk


def module_of(frame: FrameType, root: str) -> str | None:
    path = frame.f_code.co_filename
    if not path.startswith(root):
        return None
    return path[len(root) :].removesuffix(".py")


def trace(argv: list[str], root: str) -> list[tuple[str, str]]:
    """(kind, module) for every step across files from the command's handler on (building the
    argument parser is not part of the walk): kind is "call" or "return"."""
    from updater import cli

    if hasattr(cli, "command_of"):  # versions that import one command module only
        parser = cli.build_parser(cli.command_of(argv))
    else:
        parser = cli.build_parser()
    args = parser.parse_args(argv)
    steps: list[tuple[str, str]] = []
    stack: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event not in ("call", "return"):
            return
        module = module_of(frame, root)
        if module is None:
            return
        if event == "call":
            if not stack or stack[-1] != module:
                steps.append(("call", module))
            stack.append(module)
        elif stack:
            stack.pop()
            if stack and stack[-1] != module:
                steps.append(("return", stack[-1]))

    sys.setprofile(profile)
    try:
        code = args.func(args)
    finally:
        sys.setprofile(None)
    if code != 0:
        raise SystemExit(f"updater {' '.join(argv)} exited {code}")
    return steps


def summarize(steps: list[tuple[str, str]], ignore: set[str]) -> dict[str, Any]:
    walk: list[tuple[str, str]] = []
    for kind, module in steps:
        if module.split("/")[-1] in ignore:
            continue
        if walk and walk[-1][1] == module:
            continue
        walk.append((kind, module))
    seen: set[str] = set()
    revisits = 0
    for _, module in walk:
        revisits += module in seen
        seen.add(module)
    by_call = Counter(m for kind, m in walk if kind == "call")
    stays = Counter(m for _, m in walk)
    return {
        "stays": len(walk),
        "files": len(seen),
        "climbs_back_up": sum(1 for kind, _ in walk if kind == "return"),
        "returns_to_a_file_already_left": revisits,
        "stays_per_file": dict(stays.most_common()),
        "entered_by_a_call": dict(by_call.most_common()),
        "walk": [m for _, m in walk],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import updater
    from updater import bootflow, kexec

    root = str(Path(updater.__file__).parent) + "/"
    with tempfile.TemporaryDirectory(prefix="walk-kexec-") as tmp:
        work = Path(tmp)
        disk = make_disk(work)
        bindir = work / "bin"
        bindir.mkdir()
        for name in ("kexec", "systemctl", "sync", "mount"):
            (bindir / name).write_text(FAKE)
            (bindir / name).chmod(0o755)
        os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
        support = kexec.KexecSupport(tool=True, load_disabled=False, lockdown="none",
                                     systemd=True)  # fmt: skip
        setattr(kexec, "probe_support", lambda *a, **k: support)  # noqa: B010 (any version)
        setattr(bootflow, "STAGE_DIR", str(work / "stage"))  # noqa: B010
        config = work / "updater.toml"
        config.write_text("")
        base = ["--disk", str(disk), "--booted", "A", "--config", str(config)]
        from updater import cli

        if cli.main([*base, "set-active", "B"]) != 0:
            return 1
        steps = trace([*base, "kexec"], root)
    views = {"all modules": summarize(steps, set()), "corridor": summarize(steps, PURE)}
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    for name, view in views.items():
        left = view["returns_to_a_file_already_left"]
        print(
            f"{name}: {view['stays']} stays in {view['files']} files, "
            f"{view['climbs_back_up']} climbs back up, {left} returns to a file already left"
        )
        print("  stays per file:   ", view["stays_per_file"])
        print("  entered by a call:", view["entered_by_a_call"])
        print("  walk:", " > ".join(view["walk"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
