"""Argument checking shared by every command: the parser class, and argparse types that bound a
value before anything is built from it.

Every parser of the command line is a :class:`Parser`: no abbreviated options (``--size`` is not
``--sizes``), a single-valued option given twice is an error instead of "the last one wins", and a
usage error is a :class:`~ptesim.errors.UsageError` (one line, exit status 2) naming the argument.
The ``*_arg`` factories return argparse ``type=`` callables; they can be used by any option.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ptesim.errors import UsageError
from ptesim.units import format_size, parse_size

#: namespace attribute holding the destinations already set by this parse
_SEEN = "_ptesim_options_seen"


def _once(base: type[argparse.Action]) -> type[argparse.Action]:
    """``base``, refusing a second occurrence of the same option in one command line."""

    class Once(base):  # type: ignore[valid-type,misc]
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: str | Sequence[Any] | None,
            option_string: str | None = None,
        ) -> None:
            if option_string is not None:
                seen: set[str] = namespace.__dict__.setdefault(_SEEN, set())
                if self.dest in seen:
                    raise argparse.ArgumentError(self, "given more than once")
                seen.add(self.dest)
            super().__call__(parser, namespace, values, option_string)

    Once.__name__ = f"Once{base.__name__}"
    return Once


_ONCE_ACTIONS = {
    None: _once(argparse._StoreAction),
    "store": _once(argparse._StoreAction),
    "store_const": _once(argparse._StoreConstAction),
    "store_true": _once(argparse._StoreTrueAction),
    "store_false": _once(argparse._StoreFalseAction),
}


class Parser(argparse.ArgumentParser):
    """argparse with exact option names, single-valued options given once, and usage errors as
    one line naming the problem (exit status 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        for name, action in _ONCE_ACTIONS.items():
            self.register("action", name, action)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        ns.__dict__.pop(_SEEN, None)
        return ns, rest

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _fail(message: str) -> NoReturn:
    raise argparse.ArgumentTypeError(message)


def int_arg(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in ``[lo, hi]`` (``hi=None``: no upper bound)."""

    def parse(text: str) -> int:
        try:
            n = int(text.strip(), 10)
        except ValueError:
            _fail(f"{text!r} is not an integer")
        if n < lo or (hi is not None and n > hi):
            _fail(
                f"{n} is out of range: " + (f"between {lo} and {hi}" if hi is not None else f"at least {lo}")
            )
        return n

    parse.__name__ = "integer"
    return parse


def float_arg(lo: float, hi: float) -> Callable[[str], float]:
    """A finite number in ``[lo, hi]``."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            _fail(f"{text!r} is not a number")
        if not math.isfinite(x) or not lo <= x <= hi:
            _fail(f"{text} is out of range: between {lo:g} and {hi:g}")
        return x

    parse.__name__ = "number"
    return parse


def size_arg(limit: int) -> Callable[[str], str]:
    """A size (``64K``, ``2M``) of at most ``limit`` bytes, checked and returned as written."""

    def parse(text: str) -> str:
        try:
            n = parse_size(text)
        except UsageError as exc:
            _fail(str(exc).removeprefix("bad size "))
        if n > limit:
            _fail(f"{text} is more than the limit of {format_size(limit)}")
        return text

    parse.__name__ = "size"
    return parse
