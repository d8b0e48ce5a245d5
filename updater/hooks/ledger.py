"""The first-boot ledger's file, ``STATE_DIR/first-boot.json`` (its meaning: ``rules``): read
under a lock, replaced atomically (temporary file, fsync, rename, directory fsync). A damaged
file is an error, not an empty ledger: running a slot's first-boot hooks twice is what it is
there to prevent."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from updater import atomicfile
from updater.errors import DataError, DeviceError
from updater.hooks import rules
from updater.hooks.rules import LedgerEntry

FILE = "first-boot.json"


@contextlib.contextmanager
def locked(state_dir: str) -> Iterator[None]:
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(state_dir, FILE + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load(state_dir: str) -> dict[str, LedgerEntry]:
    path = Path(state_dir, FILE)
    try:
        with path.open("rb") as f:
            data = f.read(rules.MAX_LEDGER_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DeviceError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return rules.loads_ledger(data)
    except DataError as exc:
        raise DataError(f"{path}: {exc.message}", hint="remove it to run first-boot hooks "
                        "again for every slot") from None  # fmt: skip


def save(state_dir: str, ledger: rules.Ledger) -> None:
    atomicfile.write(Path(state_dir, FILE), rules.dumps_ledger(ledger), 0o644)


def forget(state_dir: str, partuuid: str) -> None:
    """The slot is about to be rewritten (``rules.forgotten``); a damaged ledger is replaced."""
    with locked(state_dir):
        try:
            ledger, damaged = load(state_dir), False
        except DataError:
            ledger, damaged = {}, True
        if damaged or partuuid.lower() in ledger:
            save(state_dir, rules.forgotten(ledger, partuuid))
