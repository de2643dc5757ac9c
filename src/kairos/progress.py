"""Progress for long jobs: a live bar in a terminal, plain log lines elsewhere (CI)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int], None]

_console = Console(stderr=True)


@contextmanager
def progress(description: str, total: int | None = None, quiet: bool = False) -> Iterator[Advance]:
    """`with progress("importing", total) as advance: advance(n)`."""
    if quiet:
        yield lambda n: None
        return
    if _console.is_terminal:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=_console, transient=False,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
        return
    yield from _log_lines(description, total)


def _log_lines(description: str, total: int | None) -> Iterator[Advance]:
    started = time.perf_counter()
    done = 0
    next_report = [started + 5.0]

    def advance(n: int) -> None:
        nonlocal done
        done += n
        now = time.perf_counter()
        if now >= next_report[0]:
            next_report[0] = now + 5.0
            share = f" ({100 * done / total:.0f}%)" if total else ""
            print(f"{description}: {done:,}{f'/{total:,}' if total else ''}{share}"
                  f" after {now - started:.0f}s", file=sys.stderr, flush=True)

    yield advance
    print(f"{description}: {done:,} done in {time.perf_counter() - started:.1f}s",
          file=sys.stderr, flush=True)
