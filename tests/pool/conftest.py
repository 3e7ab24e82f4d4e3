"""Fixtures for the pool tests: a loopback TCP proxy that can black-hole its connections."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator

import pytest


class BlackholeProxy:
    """Forward 127.0.0.1:<port> to an upstream port; ``blackhole()`` stops forwarding in both
    directions without closing any socket (what a dead peer or a dropping firewall looks like
    to the client: silence), ``resume()`` forwards again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.closed = False
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def blackhole(self) -> None:
        self.forwarding.clear()

    def resume(self) -> None:
        self.forwarding.set()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.socks.append(client)
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, client: socket.socket) -> None:
        # a connection made while black-holed is accepted (by the kernel) and then ignored
        while not self.forwarding.wait(0.1):
            if self.closed:
                return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self.socks.append(upstream)
        peers = {client: upstream, upstream: client}
        while not self.closed:
            if not self.forwarding.is_set():
                self.forwarding.wait(0.1)
                continue
            try:
                ready, _, _ = select.select(list(peers), [], [], 0.1)
            except (OSError, ValueError):
                return
            for s in ready:
                if not self.forwarding.is_set():
                    break
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for x in peers:
                        x.close()
                    return
                try:
                    peers[s].sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.closed = True
        self.forwarding.set()
        self.listener.close()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def proxy_to() -> Iterator[object]:
    made: list[BlackholeProxy] = []

    def make(port: int) -> BlackholeProxy:
        p = BlackholeProxy(port)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
