"""An application's HTTP endpoint for pgwarden: a few WSGI apps (``/metrics``, ``/holders``) on
one address, served by the standard library's ``wsgiref`` from daemon threads.

The pool metrics helper and the holders endpoint share it; it needs no prometheus_client (the
``/metrics`` app is prometheus_client's own ``make_wsgi_app``, passed in by the caller).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .listen import check_port, hostport, listen_error, warn_if_exposed

__all__ = ["Endpoint", "WsgiApp", "json_app"]

logger = logging.getLogger("pgwarden.metrics")

#: A WSGI application: ``app(environ, start_response) -> body chunks``.
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # one line per request would flood the application's stderr
        return


def json_app(document: Callable[[], Any]) -> WsgiApp:
    """A WSGI app answering ``GET`` with ``document()`` as JSON (``HEAD`` without the body;
    405 for other methods). Never cached by clients."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed",
                           [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"GET only\n"]
        body = json.dumps(document(), default=str).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Cache-Control", "no-store"),
                                  ("Content-Length", str(len(body)))])
        return [b""] if method == "HEAD" else [body]

    return app


def _family(host: str, port: int) -> socket.AddressFamily:
    """The address family of ``host`` (IPv6 for ``::1``, an IPv6 name...)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return socket.AF_INET  # the bind then fails with the resolver's one line
    return infos[0][0] if infos else socket.AF_INET


class Endpoint:
    """WSGI apps by path on one address, served from daemon threads until :meth:`close`.

    Args:
        routes: path (``/metrics``) -> WSGI app; other paths get 404 naming the paths served.
        port: 0 to 65535 (0: a free port; :attr:`port` says which).
        addr: where to bind (default loopback; a warning is logged for any other address).
        what: what it serves, for that warning (``metrics``, ``holders``).

    Raises:
        ConfigError: ``port`` is not a whole number from 0 to 65535, ``addr`` is empty or not
            a string, or no route.
        ListenError: the address cannot be bound (port in use, no such address, privileged
            port, a host name that does not resolve).
    """

    def __init__(self, routes: Mapping[str, WsgiApp], *, port: int, addr: str = "127.0.0.1",
                 what: str = "metrics") -> None:
        from ..errors import ConfigError

        port = check_port(port)
        if not isinstance(addr, str) or not addr.strip():
            raise ConfigError("addr must be an address of this host, like '127.0.0.1' "
                              f"(loopback) or '0.0.0.0' (every interface), got {addr!r}")
        if not routes:
            raise ConfigError("an endpoint needs at least one path to serve")
        self.routes = dict(routes)

        class Server(_Server):
            address_family = _family(addr, port)

        try:
            self._httpd = make_server(addr, port, self._dispatch, Server,
                                      handler_class=_QuietHandler)
        except (OSError, UnicodeError, ValueError) as exc:
            raise listen_error(exc, addr, port) from None
        self.host = addr
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name=f"pgwarden-{what}-{self.port}", daemon=True)
        self._thread.start()
        self._closed = False
        warn_if_exposed(addr, self.port, what)
        logger.info("serving %s on http://%s", ", ".join(self.routes),
                    hostport(addr, self.port))

    def _dispatch(self, environ: dict[str, Any],
                  start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        app = self.routes.get(path.rstrip("/") or "/")
        if app is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"not here: this endpoint serves {', '.join(self.routes)}\n".encode()]
        return app(environ, start_response)

    def url(self, path: str = "") -> str:
        """``http://HOST:PORT`` + ``path`` (the first route when not given)."""
        return f"http://{hostport(self.host, self.port)}{path or next(iter(self.routes))}"

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Endpoint http://{hostport(self.host, self.port)} {', '.join(self.routes)}>"
