"""A progress bar on stderr for work that may take more than a couple of seconds.

Shown only when stderr is a terminal and the command was not given ``-q``; otherwise the items pass
through untouched, so that scripts, pipes and tests see nothing.  rich is imported only when a bar
is drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

#: Set from the command line's ``-q`` (UI state only; nothing the model computes depends on it).
_QUIET = False


def configure(*, quiet: bool) -> None:
    """Turn bars off for the rest of this process (``-q``)."""
    global _QUIET
    _QUIET = quiet


def enabled(quiet: bool = False) -> bool:
    """Whether a bar would be drawn: not ``-q``, and stderr is a terminal."""
    return not (quiet or _QUIET) and sys.stderr.isatty()


def progress(
    items: Iterable[T], description: str, *, quiet: bool = False, total: int | None = None
) -> Iterator[T]:
    """Yield ``items``, advancing a bar labelled ``description`` on stderr after each."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with bar(description, total, quiet=quiet) as advance:
        for item in items:
            yield item
            advance(1)


@contextmanager
def bar(description: str, total: int | None, *, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """A bar for work that reports its own steps: ``with bar("fuzz", n) as advance: ... advance(1)``.
    Without a terminal (or with ``-q``) ``advance`` does nothing."""
    if not enabled(quiet):

        def nothing(n: int = 1) -> None:
            return None

        yield nothing
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as p:
        task = p.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            p.advance(task, n)

        yield advance
