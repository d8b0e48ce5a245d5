"""Typed errors by cause. The CLI maps each class to an exit code and one line for the user.

This module does not print anything and does not decide exit codes for flows; it only names causes.
"""

from __future__ import annotations


class UpdaterError(Exception):
    """Base class. ``hint`` is an optional second sentence telling the user what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(UpdaterError):
    """The command line or the configuration file is wrong: the operator's input, exit 2."""

    exit_code = 2


class DataError(UpdaterError):
    """Bytes found on a disk, the ESP, the OEM partition or in a state file are malformed or
    hostile (a damaged grubenv, an OEM grub.cfg GRUB would have to evaluate, a bad journal).
    Not the operator's command line: exit 1."""


class DeviceError(UpdaterError):
    """A disk, partition table or file cannot be read or written as required."""


class GptError(DeviceError):
    """The GUID partition table is missing or both copies are invalid."""


class SlotError(UpdaterError):
    """An A/B transition was refused because it would be unsafe or is impossible."""


class NoBootableSlot(SlotError):
    """No partition is a boot candidate (GRUB's "no such partition")."""


class VerificationError(UpdaterError):
    """Data did not match what was signed or expected (hash, signature, length)."""


class TransportError(UpdaterError):
    """Fetching something failed on the way: connection refused or reset, a timeout, an HTTP
    error status, a repository that cannot be read. Retrying later may help."""


class ReleaseError(UpdaterError):
    """The repository's releases do not allow what was asked: a pinned version it does not
    offer, a downgrade without permission, releases only for another architecture."""


class Interrupted(BaseException):
    """A SIGTERM or SIGHUP arrived while a flow held one off (``updater.signals``). A
    BaseException, like KeyboardInterrupt: no ``except Exception`` may swallow it."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"terminated by {name}")
        self.signum = signum


class ToolMissing(UpdaterError):
    """An external program the operation needs is not installed."""
