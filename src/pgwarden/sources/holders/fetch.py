"""Fetching applications' holders: ``GET`` each ``--holders`` URL with the standard library,
with a timeout, and read the document :func:`pgwarden.metrics.serve_holders` serves.

Nothing here raises for a URL that is malformed, dead, slow or answers something else: the
:class:`~.records.HolderSource` says what went wrong in one line, and the command's report
shows it as a warning. Proxies from the environment are not used (the endpoints are the
applications' own, usually on loopback or a private network).
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from ...conninfo import redact
from .records import FORMAT, AppHolder, HolderSource

__all__ = ["DEFAULT_TIMEOUT", "MAX_BYTES", "PendingFetch", "fetch", "fetch_all",
           "normalize_url", "parse_document", "start_fetch_all"]

logger = logging.getLogger("pgwarden.holders")

#: Seconds to wait for one application's whole answer (connect, headers and body: a
#: deadline, not a limit per read).
DEFAULT_TIMEOUT = 2.0
#: The largest document read (a process with thousands of checkouts stays far below it).
MAX_BYTES = 8 * 1024 * 1024
#: The path asked for when a URL gives none (``127.0.0.1:9188`` -> ``/holders``).
DEFAULT_PATH = "/holders"
#: What :func:`fetch_all` waits past the timeout for a fetch to report its own deadline,
#: before it gives up on it (a name lookup or a TLS handshake the deadline cannot cut short).
GRACE = 0.5

#: Longest text kept of a holder's names (pool, library, thread or task, function, state).
TEXT_CHARS = 200
#: Longest file name and stack entry kept.
PATH_CHARS = 500
#: Most stack entries kept (the innermost).
STACK_ENTRIES = 100
#: Largest pid (backend or process) and line number read.
MAX_INT = 2**31 - 1
#: Largest ``held_seconds`` read (about 31 years).
MAX_HELD_SECONDS = 1e9
#: Largest Unix time read (``started_at``, ``taken_at``: the year 5138).
MAX_UNIX_TIME = 1e11


def _deadline_reader(plain: Any, sock: socket.socket, deadline: float) -> io.BufferedReader:
    """A buffered reader of the socket (through ``plain``, its own ``sock.makefile("rb")``,
    which keeps it open while the response is read) whose every read ends at ``deadline``
    (monotonic): a server that trickles its answer a byte at a time cannot stretch it past
    the deadline."""

    class Raw(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int | None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline")
            sock.settimeout(left)
            n: int | None = plain.raw.readinto(buffer)
            return n

        def close(self) -> None:
            plain.close()
            super().close()

    return io.BufferedReader(Raw())


class _Response(http.client.HTTPResponse):
    """An ``HTTPResponse`` reading through :func:`_deadline_reader` (status line, headers and
    body alike)."""

    def __init__(self, sock: socket.socket, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = _deadline_reader(self.fp, sock, deadline)


def _shown(text: str) -> str:
    """``text`` as given, fit for a report: credentials and passwords masked (``redact``, and
    any ``user:password@`` of a URL), one short line."""
    out = " ".join(redact(text).split())
    if "@" in out:
        # user:password@host, however malformed: nothing before the last @ is shown, not even
        # what looks like a scheme (in "me:s3cr://et@host" the password contains "://")
        out = f"***@{out.rpartition('@')[2]}"
    out = "".join(ch if ch.isprintable() else "?" for ch in out)
    return out if len(out) <= 200 else out[:197] + "..."


def normalize_url(text: str) -> tuple[str, str]:
    """``(URL to fetch, URL to show)`` for a ``--holders`` value: ``http://`` is assumed
    when no scheme is given, ``/holders`` when no path is; the shown URL has no query string.

    Raises:
        ValueError: not an ``http://`` or ``https://`` URL with a host, a bad port, or
            credentials in it (the message says which, without the URL).
    """
    raw = text.strip()
    if any(ch.isspace() or not ch.isprintable() for ch in raw):
        raise ValueError("a URL has no spaces or control characters")
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ValueError("not a URL with a valid port") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs are read")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not supported")
    if not parts.hostname:
        raise ValueError("no host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    url = urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, ""))
    return url, urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))


def _reason(reason: object, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror or reason})"
    if isinstance(reason, OSError):
        return reason.strerror or str(reason) or type(reason).__name__
    return str(reason) or type(reason).__name__


def _clean(text: str, limit: int) -> str:
    """``text`` fit for a terminal: every control, format or separator character (escape
    codes, newlines, bidi overrides, lone surrogates) replaced by ``?``, at most ``limit``
    characters (cut with ``...``)."""
    out = "".join(ch if ch.isprintable() else "?" for ch in text[:limit + 1])
    return out if len(out) <= limit else out[:limit - 3] + "..."


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(key)
    if not 0 <= v <= MAX_INT:
        raise ValueError(key)
    return v


def _float(d: Mapping[str, Any], key: str, largest: float) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(key)
    if not 0 <= v <= largest:  # NaN fails too
        raise ValueError(key)
    return float(v)


def _str(d: Mapping[str, Any], key: str, default: str | None = None, *,
         limit: int = TEXT_CHARS) -> str:
    v = d.get(key, default)
    if not isinstance(v, str):
        raise TypeError(key)
    return _clean(v, limit)


def _holder(h: Any, process_pid: int, source: str) -> AppHolder:
    """One holder entry, checked and cleaned: texts printable and bounded, numbers whole or
    finite and in range (else ``TypeError`` / ``ValueError``: the entry is left out)."""
    if not isinstance(h, dict):
        raise TypeError("holder")
    stack = h.get("stack", [])
    if not isinstance(stack, list) or not all(isinstance(x, str) for x in stack):
        raise TypeError("stack")
    leaked = h.get("leaked", False)
    return AppHolder(
        pid=_int(h, "pid"), pool=_str(h, "pool"), library=_str(h, "library", "?"),
        holder=_str(h, "holder", "?"), file=_str(h, "file", "?", limit=PATH_CHARS),
        line=_int(h, "line"), function=_str(h, "function", "?"),
        held_seconds=_float(h, "held_seconds", MAX_HELD_SECONDS),
        started_at=_float(h, "started_at", MAX_UNIX_TIME),
        transaction_state=_str(h, "transaction_state", "unknown"),
        leaked=leaked if isinstance(leaked, bool) else False,
        stack=tuple(_clean(x, PATH_CHARS) for x in stack[-STACK_ENTRIES:]),
        process_pid=process_pid, source=source)


def parse_document(doc: Any, shown: str) -> HolderSource:
    """The :class:`HolderSource` for one decoded document (pure). Every holder is checked and
    cleaned here, once: its texts have no control characters (``?`` instead) and bounded
    lengths, its numbers are finite and in range. Malformed holder entries are left out and
    counted; a document that is not pgwarden's gives an error."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return HolderSource(shown, error=f"not a pgwarden holders document (no \"format\": "
                                          f"\"{FORMAT}\"): is it the URL of "
                                          "pgwarden.metrics.serve_holders()?")
    process_pid = doc.get("process_pid")
    if isinstance(process_pid, bool) or not isinstance(process_pid, int) or not (
            0 <= process_pid <= MAX_INT):
        process_pid = 0
    taken_at = doc.get("taken_at")
    taken = (float(taken_at) if isinstance(taken_at, (int, float))
             and not isinstance(taken_at, bool) and 0 <= taken_at <= MAX_UNIX_TIME else None)
    holders: list[AppHolder] = []
    skipped = 0
    pools = doc.get("pools")
    for pool in pools if isinstance(pools, list) else []:
        entries = pool.get("holders") if isinstance(pool, dict) else None
        if not isinstance(entries, list):
            skipped += 1
            continue
        for h in entries:
            try:
                holders.append(_holder(h, process_pid, shown))
            except (KeyError, TypeError, ValueError):
                skipped += 1
    return HolderSource(shown, tuple(holders), None, process_pid, taken, skipped)


def _get(target: str, deadline: float, timeout: float) -> bytes:
    """``GET target`` (an ``http://`` or ``https://`` URL from :func:`normalize_url`): the
    body of a 2xx answer, at most ``MAX_BYTES + 1`` bytes, all of it by ``deadline``.

    Raises:
        _Failed: an HTTP status other than 2xx (a redirect is reported, not followed).
        TimeoutError: the deadline passed (connecting, or waiting for the answer).
        OSError, http.client.HTTPException, ValueError: anything else.
    """
    parts = urllib.parse.urlsplit(target)
    host, port = parts.hostname or "", parts.port
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.response_class = partial(_Response, deadline=deadline)  # type: ignore[assignment]
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        if not 200 <= resp.status < 300:
            raise _Failed(_clean(f"HTTP {resp.status} {resp.reason}", TEXT_CHARS))
        try:
            return resp.read(MAX_BYTES + 1)
        except TimeoutError:
            raise _Failed(f"answer not complete within {timeout:g} s") from None
    finally:
        conn.close()


class _Failed(Exception):
    """The one line saying why a URL gave no document."""


def fetch(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> HolderSource:
    """``GET`` one application's holders. Never raises: a malformed URL, a refused or slow
    connection, an HTTP error or a redirect, a body that is not the document: the result's
    ``error`` says which in one line.

    Args:
        url: ``http://HOST:PORT/holders`` (``HOST:PORT`` alone is enough).
        timeout: seconds for the whole answer: connecting, the headers and the body (a server
            that trickles it in is cut off then). Only a slow name lookup can take longer
            (:func:`fetch_all` does not wait for it).
    """
    deadline = time.monotonic() + timeout
    try:
        target, shown = normalize_url(url)
    except ValueError as exc:
        return HolderSource(_shown(url), error=f"unusable URL: {exc}")
    try:
        body = _get(target, deadline, timeout)
    except _Failed as exc:
        return HolderSource(shown, error=str(exc))
    except (OSError, http.client.HTTPException) as exc:
        return HolderSource(shown, error=_clean(_reason(exc, timeout), TEXT_CHARS))
    except ValueError:
        return HolderSource(shown, error="unusable URL")
    if len(body) > MAX_BYTES:
        return HolderSource(shown, error=f"answer larger than {MAX_BYTES // (1024 * 1024)} MB")
    try:
        doc = json.loads(body)
    except RecursionError:
        return HolderSource(shown, error="not a pgwarden holders document (JSON nested too "
                                         "deeply)")
    except (UnicodeDecodeError, ValueError):
        return HolderSource(shown, error="not JSON: is it the URL of "
                                         "pgwarden.metrics.serve_holders()?")
    return parse_document(doc, shown)


def _shown_url(url: str) -> str:
    try:
        return normalize_url(url)[1]
    except ValueError:
        return _shown(url)


class PendingFetch:
    """:func:`fetch` of several URLs under way, all at once (a daemon thread each): see
    :func:`start_fetch_all`."""

    def __init__(self, urls: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.urls = tuple(dict.fromkeys(urls))
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout + GRACE
        self._results: list[HolderSource | None] = [None] * len(self.urls)
        self._threads = [threading.Thread(target=self._run, args=(i, u), daemon=True,
                                          name=f"pgwarden-holders-{i}")
                         for i, u in enumerate(self.urls)]
        for t in self._threads:
            t.start()

    def _run(self, i: int, url: str) -> None:
        try:
            self._results[i] = fetch(url, timeout=self.timeout)
        except Exception as exc:  # never a traceback for an application's answer
            logger.debug("--holders %s", _shown_url(url), exc_info=True)
            self._results[i] = HolderSource(_shown_url(url),
                                            error=f"unreadable answer ({type(exc).__name__})")

    def result(self) -> tuple[HolderSource, ...]:
        """What each URL answered, in the order given; one that has not answered by the
        deadline (the timeout, and a little grace) is ``no answer within ... s``."""
        for t in self._threads:
            t.join(max(0.0, self._deadline - time.monotonic()))
        return tuple(r if r is not None else
                     HolderSource(_shown_url(u), error=f"no answer within {self.timeout:g} s")
                     for u, r in zip(self.urls, self._results, strict=True))


def start_fetch_all(urls: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> PendingFetch:
    """Start :func:`fetch` of every URL at once (a URL given twice is fetched once) and
    return at once; :meth:`PendingFetch.result` waits for them, about ``timeout`` in all
    however many URLs there are and however slowly they answer."""
    return PendingFetch(urls, timeout=timeout)


def fetch_all(urls: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT
              ) -> tuple[HolderSource, ...]:
    """:func:`fetch` every URL at once, in the order given (a URL given twice is fetched
    once); about ``timeout`` in all, however many URLs and however slowly they answer."""
    if not urls:
        return ()
    return start_fetch_all(urls, timeout=timeout).result()
