"""The ``ptesim`` command line.

Each command family lives beside the code it drives and registers itself here through a
``register(subparsers)`` function; this module only builds the parser and turns user errors into a
single line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ptesim import __version__
from ptesim.argcheck import Parser
from ptesim.errors import UsageError

#: Modules that contribute subcommands, each with ``register(subparsers) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "ptesim.commands",
    "ptesim.host.commands",
    "ptesim.cost.commands",
    "ptesim.fuzz.commands",
    "ptesim.store",
)

#: Commands that only read the results store: nothing of theirs is worth saving.
_NO_SAVE = ("runs", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ptesim", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"ptesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_save(parser)
    return parser


def _add_save(parser: argparse.ArgumentParser) -> None:
    """``--save`` on every command that runs something (each leaf parser with a handler)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                if name in _NO_SAVE:
                    continue
                if p.get_default("handler") is not None:
                    p.add_argument(
                        "--save",
                        action="store_true",
                        help="record this run in the results store ('ptesim runs'; $PTESIM_DB)",
                    )
                _add_save(p)


class _Tee(io.TextIOBase):
    """Writes through to ``out`` and keeps a copy (what a ``--save``d run printed)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def _run_and_save(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the command, then record its result document (or what it printed) in the store."""
    from ptesim import store
    from ptesim.report.tidy import RESULT_ATTR

    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        rc = int(args.handler(args) or 0)
    results: Any = getattr(args, RESULT_ATTR, None)
    if results is None:
        text = tee.copy.getvalue()
        try:
            results = json.loads(text)
        except ValueError:
            results = {"text": text}
    profiles: list[str] = []
    if hasattr(args, "profile"):
        from ptesim.options import DEFAULT_PROFILES, resolve_arches

        profiles = [args.profile] if args.profile else [DEFAULT_PROFILES[a] for a in resolve_arches(args)]
    run_id = store.save_run(list(argv), args.command, results, profiles)
    print(f"saved run {run_id} in {store.db_path()}", file=sys.stderr)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        from ptesim.progress import configure

        configure(quiet=bool(getattr(args, "quiet", False)))
        from ptesim import parallel

        parallel.configure(scheduler=getattr(args, "scheduler", None))
        if getattr(args, "save", False):
            return _run_and_save(args, argv)
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
