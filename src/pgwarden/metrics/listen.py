"""Where pgwarden's HTTP endpoints listen: ``HOST:PORT`` parsing, the loopback default, and the
one line that says why an address cannot be bound. Standard library only (the holders endpoint
needs no prometheus_client)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from ..errors import ConfigError, ListenError

__all__ = [
    "DEFAULT_LISTEN_HOST",
    "check_port",
    "hostport",
    "is_loopback",
    "listen_error",
    "parse_listen",
    "warn_if_exposed",
]

logger = logging.getLogger("pgwarden.metrics")

#: Where endpoints bind when only a port is given.
DEFAULT_LISTEN_HOST = "127.0.0.1"


def parse_listen(text: str, *, option: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``PORT`` (on :data:`DEFAULT_LISTEN_HOST`) to
    ``(host, port)``; port 0 picks a free one.

    Raises:
        ConfigError: malformed (a scheme, no host, an IPv6 address without brackets, an IPv4
            address out of range), or a port outside 0..65535.
    """
    raw = text.strip()
    example = "for example 127.0.0.1:9187 (loopback) or 0.0.0.0:9187 (every interface)"
    if "://" in raw or "/" in raw:
        raise ConfigError(f"{option}: {text!r}: expected HOST:PORT without a scheme or path, "
                          f"{example}")
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_LISTEN_HOST, raw
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        if _is_ip(host):
            raise ConfigError(f"{option}: {text!r}: write an IPv6 address in brackets, like "
                              "[::1]:9187")
        raise ConfigError(f"{option}: {text!r}: expected HOST:PORT, {example}")
    if not host:
        raise ConfigError(f"{option}: {text!r}: give the host too, {example}")
    if host.replace(".", "").isdigit() and not _is_ip(host) and not _ipv4_shorthand(host):
        raise ConfigError(f"{option}: {text!r}: {host} is not an IPv4 address; {example}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{option}: {text!r}: expected HOST:PORT with a port from 0 to "
                          f"65535 (0: any free port), {example}")
    return host, int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ipv4_shorthand(host: str) -> ipaddress.IPv4Address | None:
    """``127.1`` and the other forms ``inet_aton`` accepts (and the socket binds to)."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def check_port(port: object, *, what: str = "port") -> int:
    """``port`` as an int from 0 to 65535 (0: a free one).

    Raises:
        ConfigError: not a whole number in that range.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{what} must be a whole number from 0 to 65535 (0: any free port), "
                          f"got {port!r}")
    return port


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        shorthand = _ipv4_shorthand(host)
        return shorthand is not None and shorthand.is_loopback


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_error(exc: BaseException, host: str, port: int) -> ListenError:
    """The :class:`ListenError` for a failed bind: one line saying why (port in use, no such
    address, privileged port, a host name that does not resolve)."""
    where = hostport(host, port)
    if isinstance(exc, socket.gaierror):
        what = ("the host name does not resolve: give an address of this host, like "
                "127.0.0.1")
    elif isinstance(exc, OSError):
        what = {errno.EADDRINUSE: "the port is in use (another process listens there: choose "
                                  "another port, or 0 for any free one)",
                errno.EADDRNOTAVAIL: "no such address on this host (give one of its addresses, "
                                     "like 127.0.0.1)",
                errno.EACCES: "permission denied (ports below 1024 need privileges: choose a "
                              "port from 1024)",
                errno.EINVAL: "not an address this host can listen on (a link-local IPv6 "
                              "address needs its interface, like [fe80::1%eth0])"}.get(
                    exc.errno or 0, exc.strerror or str(exc))
    else:
        what = str(exc)
    return ListenError(f"cannot listen on {where}: {what}", address=where)


def warn_if_exposed(host: str, port: int, what: str = "metrics") -> None:
    """Log a warning when an endpoint binds to an address other hosts may reach."""
    if not is_loopback(host):
        logger.warning("%s served on %s, which is not a loopback address: anyone who can reach "
                       "it can read them", what, hostport(host, port))
