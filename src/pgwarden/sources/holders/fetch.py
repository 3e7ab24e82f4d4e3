"""Fetching applications' holders: ``GET`` each ``--holders`` URL with the standard library,
with a timeout, and read the document :func:`pgwarden.metrics.serve_holders` serves.

Nothing here raises for a URL that is malformed, dead, slow or answers something else: the
:class:`~.records.HolderSource` says what went wrong in one line, and the command's report
shows it as a warning. Proxies from the environment are not used (the endpoints are the
applications' own, usually on loopback or a private network).
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...conninfo import redact
from .records import FORMAT, AppHolder, HolderSource

__all__ = ["DEFAULT_TIMEOUT", "MAX_BYTES", "fetch", "fetch_all", "normalize_url", "parse_document"]

#: Seconds to wait for one application's answer (connect and read).
DEFAULT_TIMEOUT = 2.0
#: The largest document read (a process with thousands of checkouts stays far below it).
MAX_BYTES = 8 * 1024 * 1024
#: The path asked for when a URL gives none (``127.0.0.1:9188`` -> ``/holders``).
DEFAULT_PATH = "/holders"



class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A holders endpoint answers itself: a redirect is reported (``HTTP 302``), not
    followed (to another host, or another scheme)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


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


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(key)
    return v


def _float(d: Mapping[str, Any], key: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(key)
    return float(v)


def _str(d: Mapping[str, Any], key: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if not isinstance(v, str):
        raise TypeError(key)
    return v


def _holder(h: Any, process_pid: int, source: str) -> AppHolder:
    if not isinstance(h, dict):
        raise TypeError("holder")
    stack = h.get("stack", [])
    if not isinstance(stack, list) or not all(isinstance(x, str) for x in stack):
        raise TypeError("stack")
    leaked = h.get("leaked", False)
    return AppHolder(
        pid=_int(h, "pid"), pool=_str(h, "pool"), library=_str(h, "library", "?"),
        holder=_str(h, "holder", "?"), file=_str(h, "file", "?"), line=_int(h, "line"),
        function=_str(h, "function", "?"), held_seconds=_float(h, "held_seconds"),
        started_at=_float(h, "started_at"),
        transaction_state=_str(h, "transaction_state", "unknown"),
        leaked=leaked if isinstance(leaked, bool) else False, stack=tuple(stack),
        process_pid=process_pid, source=source)


def parse_document(doc: Any, shown: str) -> HolderSource:
    """The :class:`HolderSource` for one decoded document (pure). Malformed holder entries
    are left out and counted; a document that is not pgwarden's gives an error."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return HolderSource(shown, error=f"not a pgwarden holders document (no \"format\": "
                                          f"\"{FORMAT}\"): is it the URL of "
                                          "pgwarden.metrics.serve_holders()?")
    process_pid = doc.get("process_pid")
    if isinstance(process_pid, bool) or not isinstance(process_pid, int):
        process_pid = 0
    taken_at = doc.get("taken_at")
    taken = float(taken_at) if isinstance(taken_at, (int, float)) else None
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


def fetch(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> HolderSource:
    """``GET`` one application's holders. Never raises: a malformed URL, a refused or slow
    connection, an HTTP error or a redirect, a body that is not the document: the result's
    ``error`` says which in one line.

    Args:
        url: ``http://HOST:PORT/holders`` (``HOST:PORT`` alone is enough).
        timeout: seconds for the connection and for each read.
    """
    try:
        target, shown = normalize_url(url)
    except ValueError as exc:
        return HolderSource(_shown(url), error=f"unusable URL: {exc}")
    # normalize_url admits http:// and https:// only
    request = urllib.request.Request(target, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with _opener.open(request, timeout=timeout) as resp:
            body = resp.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        return HolderSource(shown, error=f"HTTP {exc.code} {exc.reason}")
    except urllib.error.URLError as exc:
        return HolderSource(shown, error=_reason(exc.reason, timeout))
    except (OSError, http.client.HTTPException) as exc:
        return HolderSource(shown, error=_reason(exc, timeout))
    except ValueError:
        return HolderSource(shown, error="unusable URL")
    if len(body) > MAX_BYTES:
        return HolderSource(shown, error=f"answer larger than {MAX_BYTES // (1024 * 1024)} MB")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return HolderSource(shown, error="not JSON: is it the URL of "
                                         "pgwarden.metrics.serve_holders()?")
    return parse_document(doc, shown)


def fetch_all(urls: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT
              ) -> tuple[HolderSource, ...]:
    """:func:`fetch` every URL at once (threads), in the order given; a URL given twice is
    fetched once."""
    unique = list(dict.fromkeys(urls))
    if not unique:
        return ()
    if len(unique) == 1:
        return (fetch(unique[0], timeout=timeout),)
    with ThreadPoolExecutor(max_workers=min(8, len(unique)),
                            thread_name_prefix="pgwarden-holders") as ex:
        return tuple(ex.map(lambda u: fetch(u, timeout=timeout), unique))
