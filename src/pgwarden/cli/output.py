"""Where commands write: one console factory and one way to print a report.

- Off a terminal (a pipe, a file, CI logs) text is never wrapped and table cells are never cut:
  a fix such as ``SELECT pg_terminate_backend(pid)`` stays on one line. On a terminal, rich
  wraps at its width.
- Colours follow rich: none off a terminal, none with ``NO_COLOR`` set.
- A reader that goes away (``pgwarden status | head -1``) ends the output quietly; the command
  still exits with its own code (:func:`report`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console

__all__ = ["console", "discard_stdout", "emit_json", "report", "stdout_discarded"]

_discarded = [False]


#: Width of a rule (a section line) off a terminal: the console there is as wide as its
#: widest table, and a rule would fill all of it.
PIPE_RULE_WIDTH = 100


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's default exits 1; the command's own exit code must survive a reader going away
        discard_stdout()

    def rule(self, title: Any = "", *, characters: str = "─", style: Any = "rule.line",
             align: Any = "center") -> None:
        from rich.rule import Rule

        self.print(Rule(title=title, characters=characters, style=style, align=align),
                   width=None if self.is_terminal else min(self.width, PIPE_RULE_WIDTH))


#: Columns of a console that is not a terminal (and ``COLUMNS`` unset): wide enough that no
#: table cell is wrapped or cut (rich lays tables out to the console's width, 80 off a terminal).
PIPE_WIDTH = 10_000


def console() -> Console:
    """A rich console on stdout: no highlighting; when stdout is not a terminal, no wrapping of
    text and no table laid out narrower than its content (``COLUMNS`` chooses a width)."""
    out = _Console(highlight=False)
    if not out.is_terminal:
        out.soft_wrap = True
        if "COLUMNS" not in os.environ:
            out.width = PIPE_WIDTH
    return out


def emit_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (datetimes and other objects as strings)."""
    click.echo(json.dumps(data, indent=2, default=str))


def discard_stdout() -> None:
    """Point stdout at /dev/null after its reader went away, so that nothing (not even the
    interpreter's final flush) fails on it again."""
    _discarded[0] = True
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def stdout_discarded() -> bool:
    """Whether :func:`discard_stdout` ran in this process."""
    return _discarded[0]


@contextlib.contextmanager
def report() -> Iterator[None]:
    """Print a command's report inside this block: if the reader of stdout goes away, the rest
    of the report is dropped quietly and the command goes on to exit with its own code."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()
