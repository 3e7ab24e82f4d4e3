"""A loopback TCP proxy that injects the network faults users meet, for every component that
connects (``check``, the doctor, the pools, the guard).

Modes (switch at any time with :meth:`FaultProxy.set_mode`; they apply to new and open
connections alike):

- ``pass``: forward both ways.
- ``reset``: refuse new connections with a TCP RST right after accepting them, and reset the
  open ones (what a restarting load balancer or a killed peer looks like).
- ``blackhole``: stop forwarding in both directions without closing anything: silence, as a
  dead NAT entry or a dropping firewall gives. A new connection is accepted and never answered.
- ``delay``: forward, each chunk held ``delay`` seconds (a slow or distant network).
- ``deaf``: a listener that accepts and never says anything, and never reaches the server: a
  proxy or load balancer in front of a server that is down.

:meth:`FaultProxy.drop_after_ready` cuts each new connection with a RST when the client sends
its next message after the server said ``ReadyForQuery`` ``n`` times (1: the first query after
the startup never reaches the server): "the server went away after pgwarden connected",
deterministically. It needs the
client to skip the TLS/GSS negotiation (``sslmode=disable gssencmode=disable``), so that the
server's side of the stream is all framed messages.

Loopback only: it listens on 127.0.0.1 and forwards to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time

MODES = ("pass", "reset", "blackhole", "delay", "deaf")


def _rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _ReadyCounter:
    """Counts ReadyForQuery ('Z') messages in the server's framed message stream."""

    def __init__(self) -> None:
        self.buf = b""
        self.ready = 0

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 5:
            kind = self.buf[:1]
            (length,) = struct.unpack("!i", self.buf[1:5])
            if len(self.buf) < 1 + length:
                return
            if kind == b"Z":
                self.ready += 1
            self.buf = self.buf[1 + length:]


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>`` with injected faults."""

    def __init__(self, upstream_port: int, mode: str = "pass", *, delay: float = 0.0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode = "pass"
        self.delay = delay
        self.drop_after: int | None = None
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port: int = self.listener.getsockname()[1]
        self.closed = False
        self.accepted = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._changed = threading.Condition(self._lock)
        self.set_mode(mode, delay=delay)
        threading.Thread(target=self._accept, daemon=True, name="faultproxy-accept").start()

    # -- control ---------------------------------------------------------------------------

    def set_mode(self, mode: str, *, delay: float | None = None) -> None:
        """Switch to ``mode`` (one of :data:`MODES`); ``reset`` resets open connections now."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._changed:
            self.mode = mode
            if delay is not None:
                self.delay = delay
            pairs = list(self._pairs) if mode == "reset" else []
            if mode == "reset":
                self._pairs.clear()
            self._changed.notify_all()
        for client, upstream in pairs:
            _rst(client)
            if upstream is not None:
                _rst(upstream)

    def drop_after_ready(self, n: int | None) -> None:
        """Reset each connection opened from now on when its client speaks after the server
        sent ``n`` ReadyForQuery messages (``None``: never)."""
        self.drop_after = n

    @property
    def dsn_params(self) -> dict[str, object]:
        """conninfo parameters that route a client through this proxy (plain, unencrypted)."""
        return {"host": "127.0.0.1", "port": self.port, "sslmode": "disable",
                "gssencmode": "disable"}

    def close(self) -> None:
        with self._changed:
            self.closed = True
            pairs, self._pairs = list(self._pairs), []
            self._changed.notify_all()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
        with contextlib.suppress(OSError):
            self.listener.close()
        for client, upstream in pairs:
            with contextlib.suppress(OSError):
                client.close()
            if upstream is not None:
                with contextlib.suppress(OSError):
                    upstream.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- forwarding -------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            mode = self.mode
            if mode == "reset":
                _rst(client)
                continue
            threading.Thread(target=self._serve, args=(client, mode), daemon=True,
                             name="faultproxy-conn").start()

    def _wait_while(self, modes: tuple[str, ...]) -> bool:
        """Block while the mode is one of ``modes``; False once the proxy is closed."""
        with self._changed:
            while self.mode in modes and not self.closed:
                self._changed.wait(0.2)
            return not self.closed

    def _serve(self, client: socket.socket, mode: str) -> None:
        if mode == "deaf":
            # accepted, never answered, never forwarded (until the proxy closes)
            with self._changed:
                self._pairs.append((client, None))
                while not self.closed:
                    self._changed.wait(0.5)
            return
        if not self._wait_while(("blackhole", "deaf")):
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _rst(client)
            return
        with self._changed:
            self._pairs.append((client, upstream))
        counter = _ReadyCounter() if self.drop_after is not None else None
        drop_after = self.drop_after
        peers = {client: upstream, upstream: client}
        try:
            while not self.closed:
                if self.mode in ("blackhole", "deaf"):
                    if not self._wait_while(("blackhole", "deaf")):
                        return
                    continue
                try:
                    ready, _, _ = select.select(list(peers), [], [], 0.1)
                except (OSError, ValueError):
                    return
                for sock in ready:
                    if self.mode in ("blackhole", "deaf"):
                        break
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    if (counter is not None and drop_after is not None and sock is client
                            and counter.ready >= drop_after):
                        self.dropped += 1
                        _rst(client)
                        _rst(upstream)
                        return
                    if self.mode == "delay" and self.delay > 0:
                        time.sleep(self.delay)
                    try:
                        peers[sock].sendall(data)
                    except OSError:
                        return
                    if counter is not None and sock is upstream:
                        counter.feed(data)
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
