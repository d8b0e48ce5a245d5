"""What a reboot flow needs to know about the pre-reboot hooks before it runs any: the request
(``PreReboot``: where the hooks are, where the state is) and the rule whether a reboot runs them
at all (``pre_reboot_due``).

Its own small module so that a reboot that runs no hooks (back to a good slot, or a dry run
into one) does not import the hook machinery of ``updater.hooks.stages`` (the runner, the
ledger, the slot inventory; start-up time). Pure: no I/O. Running the hooks, and what a failure
means, is ``updater.hooks.stages``'s.
"""

from __future__ import annotations

from updater.config import Config, HooksSettings
from updater.records import dataclass


@dataclass(frozen=True)
class PreReboot:
    """What a reboot flow needs to run the pre-reboot hooks (``stages.before_reboot``); the
    flows take it in their request, so that every command that reboots runs them the same way."""

    settings: HooksSettings
    state_dir: str

    @classmethod
    def of(cls, cfg: Config) -> PreReboot:
        return cls(cfg.hooks, cfg.update.state_dir)


def pre_reboot_due(into: int | None, booted: int | None, proven_good: bool) -> bool:
    """Whether a reboot into partition ``into`` runs the pre-reboot hooks: only a reboot into a
    new slot does, one that is not the booted slot and has not been proven good (a slot just
    activated, or one a forced rollback gives a try). A reboot back to a good slot (a rollback,
    or the fallback after a failed trial) or into the booted slot runs none, and so does a
    reboot from a disk whose booted slot is unknown (an installer booting the disk it wrote)."""
    return into is not None and booted is not None and into != booted and not proven_good
