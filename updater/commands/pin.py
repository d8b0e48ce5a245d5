"""``updater pin VERSION`` and ``updater unpin``: hold this machine at one release, or let it
follow its channel again (``updater.pin``). The pin lives in the ``[update] state_dir``."""

from __future__ import annotations

import argparse

from updater import config, pin
from updater.commands.common import emit, out, version_arg
from updater.config import option

PIN_HELP = """\
Hold this machine at release VERSION: while the pin is set, `updater update` takes only
VERSION (the newest release of the channel is ignored; an older VERSION still needs
--allow-downgrade) and the agent stages no other release (it moves the machine to VERSION, even
an older one, as [agent] version does). `updater update --version V --override-pin` is the one
way past it. `updater status --json` shows it ("pin"). The pin is kept in the [update]
state_dir (pin.json), written atomically; a damaged pin file stops updates with one line
rather than letting the machine update.
Examples:
  updater pin 3815.2.0
  updater unpin
"""


def _state_dir(args: argparse.Namespace) -> str:
    cfg = config.load(args.config)
    return str(args.state_dir or cfg.update.state_dir)


def cmd_pin(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    before = pin.load_or_none(state_dir)
    pin.save(state_dir, args.version)
    if args.json:
        emit({"pin": str(args.version), "previous": str(before) if before else None})
    else:
        out(f"pinned to release {args.version}" + (f" (was {before})" if before else "") + "\n")
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    before = pin.load_or_none(state_dir)
    had = pin.clear(state_dir)
    if args.json:
        emit({"pin": None, "previous": str(before) if before else None})
    else:
        out("unpinned: following the channel again\n" if had else "no pin was set\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pin", help="hold this machine at one release", description=PIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("version", type=version_arg, metavar="VERSION")
    p.add_argument("--state-dir", type=option("update", "state_dir"), metavar="DIR",
                   help="where the pin is kept ([update] state_dir)")  # fmt: skip
    p.add_argument("--json", action="store_true", help='{"pin": "V", "previous": "V"|null}')
    p.set_defaults(func=cmd_pin)
    u = sub.add_parser("unpin", help="follow the channel again after updater pin",
                       description="Remove the pin of `updater pin`: update and the agent take "
                       "the newest release of the channel again.")  # fmt: skip
    u.add_argument("--state-dir", type=option("update", "state_dir"), metavar="DIR",
                   help="where the pin is kept ([update] state_dir)")  # fmt: skip
    u.add_argument("--json", action="store_true", help='{"pin": null, "previous": "V"|null}')
    u.set_defaults(func=cmd_unpin)
