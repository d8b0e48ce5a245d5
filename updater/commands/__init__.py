"""Subcommands. ``INDEX`` names every command, the module that implements it and its one-line
help; each module has ``register(subparsers)`` adding the parsers of its commands, and a
parser's ``func`` default takes the parsed arguments and returns an exit status.

The CLI imports only the module of the command it runs: ``updater verity format`` does not pay
for the boot path's imports, nor ``updater --help`` for any (start-up time on small machines)."""

from __future__ import annotations

from updater.records import dataclass


@dataclass(frozen=True)
class Entry:
    module: str  # updater.commands.<module>
    help: str


INDEX: dict[str, Entry] = {
    "status": Entry("slots", "show the A/B state of the disk"),
    "next": Entry("slots", "choose the slot to boot and consume one try (as GRUB does)"),
    "prioritize": Entry(
        "slots", "give PART the top priority, keep the order of the rest (cgpt prioritize)"
    ),
    "set-active": Entry("slots", "make a freshly written slot boot next, on trial"),
    "mark-good": Entry("slots", "mark a slot (default: the booted one) as proven good"),
    "mark-bad": Entry("slots", "never boot PART again (priority 0, tries 0, not successful)"),
    "rollback": Entry("slots", "boot the other slot next (manual rollback)"),
    "sync": Entry(
        "slots", "carry boot tries GRUB consumed into the GPT and refresh the ESP's grubenv"
    ),
    "repair": Entry("slots", "rewrite an invalid or stale GPT copy from the valid one"),
    "create-disk": Entry("slots", "create a sparse disk image with the Flatcar layout"),
    "kexec": Entry(
        "boot", "boot the chosen slot now with kexec, consuming its try (firmware fallback)"
    ),
    "reboot": Entry(
        "boot", "reboot into the chosen slot: kexec by default, or through the firmware"
    ),
    "verity": Entry("verity", "build or check dm-verity hash trees"),
    "config": Entry("config", "show the effective settings, or the reference of every setting"),
    "releases": Entry("releases", "list the releases the repository offers this machine"),
    "update": Entry(
        "update", "install the newest signed release into the other slot and activate it"
    ),
    "pin": Entry("pin", "hold this machine at one release (update and the agent install no other)"),
    "unpin": Entry("pin", "follow the channel again after updater pin"),
    "repo": Entry("repo", "publish signed releases: a TUF repository"),
    "agent": Entry(
        "agent", "the fleet update agent (unattended updates, health-gated commit, rollback)"
    ),
    "lock": Entry("lock", "the fleet's reboot semaphore in etcd: status, unlock, set-max, serve"),
    "install": Entry(
        "install", "install the OS on a blank disk (partition, format, GRUB, the release, verify)"
    ),
    "checkpoint": Entry(
        "checkpoint", "restore the processes checkpointed before a kexec (CRIU); criu check"
    ),
}
