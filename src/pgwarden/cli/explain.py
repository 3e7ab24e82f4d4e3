"""``pgwarden explain``: what an error message or SQLSTATE means, from :mod:`pgwarden.diagnose`."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from ..conninfo import redact
from ..diagnose import explain as explain_text
from .boundary import EXIT
from .options import format_option
from .output import console, emit_json, report

__all__ = ["MAX_INPUT", "explain"]

#: Characters of input looked at (an error message is a few lines; a whole log is not needed).
MAX_INPUT = 64 * 1024
#: Characters of the (redacted) input echoed back in ``--format json``.
ECHO_CHARS = 200


@click.command()
@click.argument("message", nargs=-1, required=True)
@format_option
@click.pass_context
def explain(ctx: click.Context, message: tuple[str, ...], fmt: str) -> None:
    """Explain an error message or SQLSTATE: likely causes and fixes.

    MESSAGE is the error text (quote it) or a SQLSTATE such as 53300; '-' reads stdin (the
    first 64 KiB). Exit 0 when it is known, 1 when not."""
    text = " ".join(message)
    if text.strip() == "-":
        text = sys.stdin.read(MAX_INPUT)
    text = text[:MAX_INPUT]
    found = explain_text(text)
    with report():
        if fmt == "json":
            query = redact(text.strip())
            emit_json({
                "query": query[:ECHO_CHARS] + ("…" if len(query) > ECHO_CHARS else ""),
                "matches": [
                    {"id": d.id, "kind": d.kind, "title": d.title, "sqlstates": list(d.sqlstates),
                     "causes": list(d.causes), "fixes": list(d.fixes), "source": d.source}
                    for d in found],
            })
        else:
            out = console()
            if not found:
                out.print("no known error matches; run `pgwarden doctor` to look at the server")
            for i, d in enumerate(found):
                if i:
                    out.print()
                codes = f" (SQLSTATE {', '.join(d.sqlstates)})" if d.sqlstates else ""
                out.print(f"[bold]{escape(d.title)}[/]{codes}  [dim]{d.id}[/]")
                out.print("[bold]likely causes[/]")
                for c in d.causes:
                    out.print(f"  - {escape(c)}")
                out.print("[bold]fixes[/]")
                for f in d.fixes:
                    out.print(f"  - {escape(f)}")
                if d.source:
                    out.print(f"[dim]source: {escape(d.source)}[/]")
    ctx.exit(EXIT["ok"] if found else EXIT["no_match"])
