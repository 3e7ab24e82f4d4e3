"""``pgwarden top``'s live terminal view (textual): the header and usage bar, the sessions
table, and the keys. Everything it shows comes from :func:`pgwarden.top.model.build_frame`;
what it may cancel or terminate from :meth:`pgwarden.top.live.Source.act`.

Keys: ``s`` next sort key, ``r`` reverse, ``i`` hide idle, ``p`` pause, ``+``/``-`` refresh
interval, ``a``/``u``/``d``/``t`` filter by application / user / database / state (empty
clears), ``x`` clear filters, ``c`` cancel the selected session's query, ``k`` terminate the
selected session (both after a confirmation), ``q`` quit.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, ClassVar

import psycopg
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Label, Static

from ..diagnose import classify
from ..errors import ConnectError
from .live import Acted, Kind, Source
from .model import Frame, Row, View
from .render import COLUMNS, cells, header

__all__ = ["Confirm", "FilterPrompt", "TopApp"]

#: Refresh intervals the ``+`` / ``-`` keys step through (seconds).
INTERVALS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Confirm(ModalScreen[bool]):
    """``Terminate pid 4711 (web, idle in transaction)? y/n``."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]
    DEFAULT_CSS = """
    Confirm { align: center middle; }
    Confirm > Label { border: thick $warning; padding: 1 2; background: $surface; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Label(f"{self.question}  [y/n]", id="question")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class FilterPrompt(ModalScreen[str | None]):
    """Asks for a filter (glob or substring; empty clears it)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    FilterPrompt { align: center middle; }
    FilterPrompt > Vertical { width: 60; height: auto; border: thick $accent;
                              background: $surface; padding: 1 2; }
    """

    def __init__(self, field: str, current: str) -> None:
        super().__init__()
        self.field = field
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"filter by {self.field} (glob like web-*, or text; empty clears)")
            yield Input(value=self.current, id="filter")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TopApp(App[None]):
    """The live view.

    Args:
        source: where frames come from (and acts go).
        view: the starting view.
        interval: seconds between refreshes.
    """

    TITLE = "pgwarden top"
    CSS = """
    #header { height: auto; padding: 0 1; }
    #status { height: 1; padding: 0 1; color: $warning; }
    DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("s", "sort", "sort"),
        Binding("r", "reverse", "reverse"),
        Binding("i", "hide_idle", "hide idle"),
        Binding("p", "pause", "pause"),
        Binding("plus,equals_sign", "slower", "+interval", key_display="+"),
        Binding("minus", "faster", "-interval", key_display="-"),
        Binding("a", "filter('application')", "app"),
        Binding("u", "filter('user')", "user"),
        Binding("d", "filter('database')", "db"),
        Binding("t", "filter('state')", "state"),
        Binding("x", "clear_filters", "clear"),
        Binding("c", "act('cancel')", "cancel"),
        Binding("k", "act('terminate')", "terminate"),
    ]

    def __init__(self, source: Source, *, view: View | None = None,
                 interval: float = 2.0) -> None:
        super().__init__()
        self.source = source
        self.view = view or View()
        self.interval = interval
        self.paused = False
        self.frame: Frame | None = None
        self.status = ""
        self._timer: Any = None

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Static(id="status")
        table: DataTable[str] = DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#sessions", DataTable)
        for col in COLUMNS:
            table.add_column(col, key=col)
        self._schedule()
        self.run_worker(self.reload(), exclusive=True, group="reload")

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(self.interval, self._tick)

    def _tick(self) -> None:
        if not self.paused:
            self.run_worker(self.reload(), exclusive=True, group="reload")

    # -- data -----------------------------------------------------------------------------

    async def reload(self) -> None:
        """Take a new snapshot (in a thread) and redraw."""
        try:
            await asyncio.to_thread(self.source.take)
        except (ConnectError, psycopg.Error) as exc:
            failure = classify(exc)
            self.set_status(f"no snapshot: {failure.said}"
                            + (f" ({failure.title})" if failure.title else "")
                            + "; retrying")
            return
        if self.status.startswith("no snapshot"):
            self.set_status("")
        self.redraw()

    def redraw(self) -> None:
        """Rebuild the frame from the last snapshot with the current view (no query)."""
        if self.source.snapshot is None:
            return
        self.frame = self.source.frame(self.view)
        self.query_one("#header", Static).update(
            header(self.frame, paused=self.paused, interval=self.interval))
        table = self.query_one("#sessions", DataTable)
        selected = self.selected_row()
        table.clear()
        for row in self.frame.rows:
            table.add_row(*cells(row), key=str(row.pid))
        if selected is not None:
            for i, row in enumerate(self.frame.rows):
                if row.pid == selected.pid:
                    table.move_cursor(row=i)
                    break

    def set_status(self, text: str) -> None:
        self.status = text
        self.query_one("#status", Static).update(text)

    def selected_row(self) -> Row | None:
        """The row under the cursor, or ``None``."""
        if self.frame is None or not self.frame.rows:
            return None
        table = self.query_one("#sessions", DataTable)
        index = table.cursor_row
        if 0 <= index < len(self.frame.rows):
            return self.frame.rows[index]
        return None

    # -- actions --------------------------------------------------------------------------

    def action_sort(self) -> None:
        self.view = self.view.next_sort()
        self.redraw()

    def action_reverse(self) -> None:
        self.view = replace(self.view, descending=not self.view.descending)
        self.redraw()

    def action_hide_idle(self) -> None:
        self.view = replace(self.view, hide_idle=not self.view.hide_idle)
        self.redraw()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.redraw()

    def _set_interval(self, step: int) -> None:
        i = min(range(len(INTERVALS)), key=lambda j: abs(INTERVALS[j] - self.interval))
        self.interval = INTERVALS[max(0, min(len(INTERVALS) - 1, i + step))]
        self._schedule()
        self.redraw()

    def action_slower(self) -> None:
        self._set_interval(+1)

    def action_faster(self) -> None:
        self._set_interval(-1)

    def action_filter(self, field: str) -> None:
        def done(value: str | None) -> None:
            if value is not None:
                self.view = self.view.with_filter(field, value)
                self.redraw()

        self.push_screen(FilterPrompt(field, getattr(self.view, field)), done)

    def action_clear_filters(self) -> None:
        self.view = replace(self.view, application="", user="", database="", state="")
        self.redraw()

    def action_act(self, kind: Kind) -> None:
        row = self.selected_row()
        if row is None or self.source.snapshot is None:
            self.set_status("no session selected")
            return
        from .model import may_act

        why = may_act(row, self.source.snapshot, self.source.protection)
        if why is not None:
            self.set_status(f"refused: pid {row.pid} is protected ({why})")
            return
        what = "Terminate" if kind == "terminate" else "Cancel the query of"
        question = (f"{what} pid {row.pid} ({row.application or '(none)'}, {row.user}, "
                    f"{row.state})?")

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._act(row, kind), group="act")
            else:
                self.set_status("nothing done")

        self.push_screen(Confirm(question), answered)

    async def _act(self, row: Row, kind: Kind) -> None:
        acted: Acted = await asyncio.to_thread(self.source.act, row, kind)
        self.set_status(acted.message)
        await self.reload()
