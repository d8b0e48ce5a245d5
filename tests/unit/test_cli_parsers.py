"""A command that runs gets its own parser only, and that parser is the very one a full build
makes (the same options, the same help), for every command in the index."""

from __future__ import annotations

import argparse

import pytest

from updater import cli
from updater.commands import INDEX


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(INDEX))
def test_the_running_command_alone_gets_the_parser_a_full_build_gives_it(command: str) -> None:
    alone = subcommands(cli.build_parser(command, others=False))
    assert list(alone) == [command]
    full = subcommands(cli.build_parser(command, others=True))
    assert len(full) == len(INDEX)
    assert alone[command].format_help() == full[command].format_help()
    assert comparable(alone[command]._defaults) == comparable(full[command]._defaults)


def comparable(defaults: dict[str, object]) -> dict[str, object]:
    """A handler made by a factory in each build is a new function object: compare its code
    and what it closes over."""
    out: dict[str, object] = {}
    for key, value in defaults.items():
        code = getattr(value, "__code__", None)
        cells = getattr(value, "__closure__", None) or ()
        out[key] = (code, [c.cell_contents for c in cells]) if code is not None else value
    return out


def test_a_stand_in_parser_takes_whatever_a_register_function_does_with_it() -> None:
    unused = cli._Unused()
    group = unused.add_mutually_exclusive_group(required=True)
    group.add_argument("--x", action="store_true")
    actions = unused.add_subparsers(dest="a")
    actions.required = True
    assert actions.add_parser("y").set_defaults(func=print) is unused
