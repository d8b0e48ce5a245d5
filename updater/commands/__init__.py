"""Subcommands. Each module has ``register(subparsers)`` adding its parsers; a parser's ``func``
default takes the parsed arguments and returns an exit status."""
