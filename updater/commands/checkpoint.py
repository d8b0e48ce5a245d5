"""``updater checkpoint restore|check``: bring back the process trees dumped before a kexec,
and say whether CRIU works on this kernel. The dump itself is part of ``updater kexec``.

``restore --json`` prints ``{"restored": bool, "trees": [names], "failed": ["name: why"],
"downtime_seconds": float | null}``; nothing to restore is ``restored: false`` and exit 0.
"""

from __future__ import annotations

import argparse

from updater import config
from updater.commands import INDEX
from updater.commands.common import emit, out
from updater.quiesce import criu


def cmd_restore(args: argparse.Namespace) -> int:
    settings = config.load(args.config).checkpoint
    done = criu.restore(settings)
    if done is None:
        if args.json:
            emit({"restored": False, "trees": [], "failed": [], "downtime_seconds": None})
        else:
            out(f"no checkpoint in {settings.dir}\n")
        return 0
    names = [t.name for t in done.manifest.trees]
    if args.json:
        emit({"restored": not done.failed, "trees": names, "failed": list(done.failed),
              "downtime_seconds": round(done.downtime, 3)})  # fmt: skip
    else:
        back = len(names) - len(done.failed)
        out(f"restored {back} of {len(names)} process tree(s) ({', '.join(names)}); "
            f"downtime {done.downtime:.1f} s\n")  # fmt: skip
        for line in done.failed:
            out(f"not restored: {line}\n")
    return 1 if done.failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    why = criu.check()
    if args.json:
        emit({"criu": why is None, "reason": why})
    else:
        out("criu works on this kernel\n" if why is None else f"criu cannot work here: {why}\n")
    return 0 if why is None else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "checkpoint",
        help=INDEX["checkpoint"].help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Process trees selected in [checkpoint] are dumped with CRIU by updater kexec,\n"
            "right before the jump, into [checkpoint] dir. After the new slot booted,\n"
            "updater-restore.service runs `updater checkpoint restore`: once per checkpoint,\n"
            "never in the boot that wrote it; it prints the downtime (freeze to restored).\n"
            f"Settings: {config.CONFIG_PATH} (updater config --help)."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, func, text in (
        ("restore", cmd_restore, "restore the checkpoint written before the kexec"),
        ("check", cmd_check, "whether CRIU works on this kernel (criu check)"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("--json", action="store_true", help="print the result as JSON")
        a.set_defaults(func=func)
