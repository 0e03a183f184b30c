"""The ``ptesim`` command line.

Each command family lives beside the code it drives and registers itself here through a
``register(subparsers)`` function; this module only builds the parser and turns user errors into a
single line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from ptesim import __version__
from ptesim.argcheck import Parser
from ptesim.errors import UsageError

#: Modules that contribute subcommands, each with ``register(subparsers) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "ptesim.commands",
    "ptesim.host.commands",
    "ptesim.cost.commands",
    "ptesim.fuzz.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ptesim", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"ptesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int | None] = args.handler
        return int(handler(args) or 0)
    except UsageError as exc:
        print(f"ptesim: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("ptesim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
