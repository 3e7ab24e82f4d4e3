"""``--holders`` URLs that answer badly, served by a real HTTP server on loopback: a body
that trickles in byte by byte, headers that do, JSON nested a hundred thousand deep, and
documents whose strings carry escape codes and newlines and whose numbers are NaN, infinite or
absurd. Each is one warning line (or a cleaned-up holder) within about ``--holders-timeout``
(however many such URLs are given); the command works on and exits as it would without it."""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwarden.conninfo import resolve
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.sources import holders as holders_source
from pgwarden.top import Source

from .test_holders import one_line, pgwarden

pytestmark = pytest.mark.timeout(180)

#: How long the slow answers keep trickling before they end on their own (far past any
#: --holders-timeout used here: a fetch that waits for the end takes this long).
TRICKLE_SECONDS = 20.0

ESC = "\x1b[31mred\x1b[0m"


def holder_doc(**fields: Any) -> dict[str, Any]:
    """A well-formed holder, ``fields`` changed."""
    h: dict[str, Any] = {
        "pool": "api", "library": "pgwarden", "pid": 1, "holder": "worker-1",
        "started_at": 1_700_000_000.0, "held_seconds": 5.0, "transaction_state": "idle",
        "file": "app/x.py", "line": 10, "function": "f", "leaked": False,
        "stack": ["app/x.py:10 in f"]}
    h.update(fields)
    return h


def document(*holders: dict[str, Any], **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": "pgwarden-holders/1", "process_pid": 4242,
                           "taken_at": 1_700_000_000.0,
                           "pools": [{"pool": "api", "holders": list(holders)}]}
    doc.update(top)
    return doc


class Hostile:
    """A loopback HTTP server; ``bodies[path]`` is served as JSON, ``/slowbody`` sends its
    headers and then one byte every 0.2 s, ``/slowheaders`` sends its headers one byte every
    0.2 s (both for :data:`TRICKLE_SECONDS`)."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def trickle(self, data: bytes) -> None:
                end = time.monotonic() + TRICKLE_SECONDS
                for i in range(10**6):
                    if outer.stop.is_set() or time.monotonic() > end:
                        return
                    self.wfile.write(data[i % len(data):i % len(data) + 1])
                    self.wfile.flush()
                    time.sleep(0.2)

            def do_GET(self) -> None:
                try:
                    path = self.path.partition("?")[0]
                    if path == "/slowbody":
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.end_headers()
                        self.trickle(b" ")
                    elif path == "/slowheaders":
                        self.wfile.write(b"HTTP/1.0 200 OK\r\n")
                        self.trickle(b"X-Slow: aaaaaaaaaa\r\n")
                    elif path == "/redirect":
                        self.send_response(302)
                        self.send_header("Location", outer.url("/deep"))
                        self.end_headers()
                    elif path == "/teapot":
                        self.wfile.write(f"HTTP/1.0 418 I'm a {ESC}\r\n\r\n".encode())
                    elif path in outer.bodies:
                        body = outer.bodies[path]
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    else:
                        self.send_error(404)
                except OSError:
                    pass  # the client gave up

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def serve(self, path: str, body: bytes | dict[str, Any]) -> str:
        self.bodies[path] = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.url(path)

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def test_a_trickling_answer_ends_at_the_timeout(hostile: Hostile) -> None:
    urls = [hostile.url("/slowbody"), hostile.url("/slowheaders"),
            hostile.url("/slowbody?again"), hostile.url("/slowheaders?again")]
    [source], took = timed(lambda: holders_source.fetch_all(urls[:1], timeout=0.5))
    assert took < 5, took
    assert source.error is not None and "within 0.5 s" in source.error
    # several slow URLs at once: one timeout in all, not one per URL
    sources, took = timed(lambda: holders_source.fetch_all(urls, timeout=1.0))
    assert took < 5, took
    assert [s.error is not None and "within 1 s" in s.error for s in sources] == [True] * 4


@pytest.mark.parametrize("command", [["status"], ["top", "--once"], ["doctor"]])
def test_a_trickling_url_is_one_warning_line(pg: EmbeddedPostgres, hostile: Hostile,
                                             command: list[str]) -> None:
    plain = pgwarden(*command, "--dsn", pg.dsn)
    res, took = timed(lambda: pgwarden(*command, "--dsn", pg.dsn, "--holders-timeout", "1",
                                       "--holders", hostile.url("/slowbody"),
                                       "--holders", hostile.url("/slowheaders")))
    assert took < 10, took
    assert res.returncode == plain.returncode and res.stderr == plain.stderr, res.stderr
    one_line(res.stdout, "--holders ", "/slowbody", "within 1 s")
    one_line(res.stdout, "--holders ", "/slowheaders", "within 1 s")


def test_top_refresh_waits_for_holders_at_most_the_timeout(pg: EmbeddedPostgres,
                                                           hostile: Hostile) -> None:
    src = Source(resolve(pg.dsn, command="top"), holders=[hostile.url("/slowbody")],
                 holders_timeout=0.5)
    try:
        for _ in range(2):
            _, took = timed(src.take)
            assert took < 5, took
            assert src.holders is not None and len(src.holders.warnings) == 1
    finally:
        src.close()


def test_redirects_and_http_errors_are_reported_not_followed(hostile: Hostile) -> None:
    hostile.serve("/deep", document())
    assert holders_source.fetch(hostile.url("/deep")).error is None
    assert holders_source.fetch(hostile.url("/redirect")).error == "HTTP 302 Found"
    assert holders_source.fetch(hostile.url("/missing")).error == "HTTP 404 Not Found"
    # the server's reason phrase is the server's: cleaned like any text it sends
    assert holders_source.fetch(hostile.url("/teapot")).error == "HTTP 418 I'm a ?[31mred?[0m"


@pytest.mark.parametrize("command", [["status"], ["top", "--once"], ["doctor"],
                                     ["doctor", "--format", "json"]])
def test_deeply_nested_json_is_a_warning(pg: EmbeddedPostgres, hostile: Hostile,
                                         command: list[str]) -> None:
    url = hostile.serve("/deep", b"[" * 100_000 + b"]" * 100_000)
    plain = pgwarden(*command, "--dsn", pg.dsn)
    res = pgwarden(*command, "--dsn", pg.dsn, "--holders", url)
    assert res.returncode == plain.returncode, res.stdout + res.stderr
    assert res.stderr == plain.stderr and "internal error" not in res.stderr
    if "json" in command:
        [warning] = json.loads(res.stdout)["holders"]["warnings"]
        assert "/deep" in warning
    else:
        one_line(res.stdout, "--holders ", "/deep", "not a pgwarden holders document")


def test_deeply_nested_json_in_fetch(hostile: Hostile) -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        url = hostile.serve("/deep", body)
        source = holders_source.fetch(url, timeout=5)
        assert source.error is not None and "nested" in source.error, source.error


CONTROL = "\x1b\n\r\t\x07\x00\x7f\x9b\u2028\u202e"


def test_escape_codes_and_absurd_numbers_never_reach_the_terminal(
        pg: EmbeddedPostgres, hostile: Hostile) -> None:
    with psycopg.connect(pg.dsn) as a, psycopg.connect(pg.dsn) as b, \
            psycopg.connect(pg.dsn) as c:
        pa, pb, pc = a.info.backend_pid, b.info.backend_pid, c.info.backend_pid
        url = hostile.serve("/escapes", document(
            holder_doc(pid=pa, pool=f"api{ESC}", holder="worker\n\rFAKE LINE",
                       function=f"f{ESC}", file="app/x\n\r.py", transaction_state=ESC,
                       stack=[f"x{ESC}"]),
            holder_doc(pid=pb, held_seconds=1e300, started_at=1e308),
            holder_doc(pid=pc, function="g" * 10_000, file="p/" * 10_000, holder="h" * 10_000),
            taken_at=1e308))
        body = hostile.bodies["/escapes"]
        # NaN and Infinity are what Python's json.dumps writes for them: read them too
        nan = hostile.serve("/nan", body.replace(b'"held_seconds": 1e+300', b'"held_seconds": '
                                                 b'NaN').replace(b"1e+308", b"Infinity"))
        assert body != hostile.bodies["/nan"]
        for command in (["status"], ["top", "--once"], ["doctor"]):
            for source in (url, nan):
                res = pgwarden(*command, "--dsn", pg.dsn, "--holders", source)
                assert res.returncode in (0, 1), res.stdout + res.stderr
                out = res.stdout
                assert not any(ch in out for ch in CONTROL.replace("\n", "")), repr(out)
                # a newline in a thread name cannot start a line of its own
                assert all("worker??FAKE LINE" in ln for ln in out.splitlines()
                           if "FAKE LINE" in ln), out
                assert not any(f"{x} {u}" in out for x in ("nan", "inf") for u in "sh")
                assert "e+" not in out
                assert "g" * 300 not in out and "h" * 300 not in out
                one_line(out, "--holders ", "1 malformed holder entries left out")
                if command == ["status"]:
                    line = one_line(out, f"pid {pa} (api?[31mred?[0m)")
                    assert "worker??FAKE LINE" in line and "app/x??.py" in line
        res = pgwarden("doctor", "--dsn", pg.dsn, "--format", "json", "--holders", url)
        held = json.loads(res.stdout)["holders"]
        [source_doc] = held["sources"]
        assert source_doc["taken_at"] is None and source_doc["skipped"] == 1
        assert {s["pid"] for s in held["sessions"]} == {pa, pc}


def printable_and_short(text: str, limit: int) -> bool:
    return text.isprintable() and len(text) <= limit


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "pid": st.integers() | st.floats() | st.text(),
    "pool": st.text(), "library": st.text(), "holder": st.text(max_size=2000),
    "file": st.text(max_size=2000), "line": st.integers(), "function": st.text(),
    "held_seconds": st.floats() | st.integers(), "started_at": st.floats() | st.integers(),
    "transaction_state": st.text(), "leaked": st.booleans() | st.none(),
    "stack": st.lists(st.text(max_size=1000), max_size=300)}),
    st.floats() | st.integers() | st.none())
def test_parsed_holders_are_clean(fields: dict[str, Any], taken_at: Any) -> None:
    """Whatever an application sends, a parsed holder is printable, bounded and finite."""
    source = holders_source.parse_document(document(holder_doc(**fields), taken_at=taken_at),
                                           "http://x/holders")
    assert len(source.holders) + source.skipped == 1
    assert source.taken_at is None or math.isfinite(source.taken_at)
    for h in source.holders:
        for text in (h.pool, h.library, h.holder, h.function, h.transaction_state):
            assert printable_and_short(text, 200), text
        assert printable_and_short(h.file, 500) and len(h.stack) <= 100
        assert all(printable_and_short(s, 500) for s in h.stack)
        assert 0 <= h.pid < 2**31 and 0 <= h.line < 2**31
        assert math.isfinite(h.started_at) and 0 <= h.held_seconds <= 1e9
        for text in (h.short, h.describe(), h.location):
            assert text.isprintable() and len(text) < 2000 and "nan" not in text
