"""``updater config``: the effective settings, and the reference of every setting."""

from __future__ import annotations

import argparse
import sys

from updater import config, jsonout
from updater.commands import INDEX


def cmd_show(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if args.json:
        sys.stdout.write(jsonout.dumps({"source": cfg.source, "settings": config.as_dict(cfg)}))
        return 0
    sys.stdout.write(f"# {cfg.source or 'no configuration file: every setting at its default'}\n")
    for section, values in config.as_dict(cfg).items():
        sys.stdout.write(f"\n[{section}]\n")
        for key in values:
            sys.stdout.write(f"{key} = {config.show(getattr(getattr(cfg, section), key))}\n")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(config.reference())
    return 0


DESCRIPTION = f"""\
Settings live in {config.CONFIG_PATH} (TOML; --config FILE reads another file). Unknown
sections and keys are refused, so a misspelt setting never silently keeps its default.

"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help=INDEX["config"].help,
        description=DESCRIPTION + config.reference(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="config_command", metavar="ACTION")
    actions.required = True
    show = actions.add_parser("show", help="the effective settings (file plus defaults)")
    show.add_argument(
        "--json", action="store_true", help='{"source": FILE|null, "settings": {...}}'
    )
    show.set_defaults(func=cmd_show)
    ref = actions.add_parser("reference", help="every setting with its default, as Markdown")
    ref.set_defaults(func=cmd_reference)
