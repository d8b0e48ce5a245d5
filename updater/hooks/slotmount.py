"""The new slot mounted read-only for the post-install hooks: its partition node, or its byte
range of a disk image through a read-only loop device (``mount -o ro,loop,offset=,sizelimit=``).
The mount point is a fresh directory under ``/run/updater/hooks`` (the temporary directory
where /run is not writable), unmounted and removed afterwards whatever happens. It mounts the
filesystem as written and read back against the signed root hash by the update flow; it does
not set up dm-verity, and it never mounts read-write."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from updater.errors import DeviceError, UpdaterError
from updater.log import log
from updater.run import run
from updater.slotwrite import Region

RUN_DIR = "/run/updater/hooks"


def _base() -> str:
    try:
        Path(RUN_DIR).mkdir(parents=True, exist_ok=True)
        return RUN_DIR
    except OSError:
        return tempfile.gettempdir()


def mount_argv(region: Region, fs_type: str, where: str) -> list[str]:
    options = "ro,nodev,nosuid"
    if region.offset or region.size is not None:
        options += f",loop,offset={region.offset}"
        if region.size is not None:
            options += f",sizelimit={region.size}"
    return ["mount", "-t", fs_type, "-o", options, region.path, where]


@contextlib.contextmanager
def mounted(region: Region, fs_type: str) -> Iterator[str]:
    where = tempfile.mkdtemp(prefix="slot-", dir=_base())
    try:
        try:
            run(mount_argv(region, fs_type, where))
        except UpdaterError as exc:
            raise DeviceError(f"cannot mount the new slot for the post-install hooks: "
                              f"{exc.message}") from None  # fmt: skip
        try:
            yield where
        finally:
            try:
                run(["umount", where])
            except UpdaterError as exc:
                log(f"post-install: cannot unmount {where}: {exc.message}; detaching it")
                run(["umount", "--lazy", where], check=False)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(where)
