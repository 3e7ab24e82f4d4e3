"""Which PgBouncer client holds which PostgreSQL session.

PostgreSQL sees PgBouncer's server connections as its clients (``client_addr`` is PgBouncer's
address); only PgBouncer knows the real client. ``SHOW SERVERS.remote_pid`` is the PostgreSQL
backend pid of a server connection ("PID of backend server process", pgbouncer(1); taken from
the BackendKeyData PostgreSQL sent), so it joins ``pg_stat_activity.pid``; the server's
``link`` is the ``ptr`` of the ``SHOW CLIENTS`` row it serves.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..postgres.records import Snapshot
from .records import BouncerSnapshot, Connection

__all__ = ["ServerSession", "server_sessions"]


@dataclass(frozen=True, slots=True)
class ServerSession:
    """One PgBouncer server connection and the PostgreSQL session behind it.

    Attributes:
        backend_pid: ``SHOW SERVERS.remote_pid`` = ``pg_stat_activity.pid``.
        database, user: the pool.
        bouncer_state: PgBouncer's state of the server connection (``active`` = linked to a
            client, ``idle``, ``used``, ``tested``, ``new``).
        state, query, state_age: PostgreSQL's view (``None`` when the pid is not in the
            PostgreSQL snapshot: another server, or gone).
        client_addr, client_port, client_application: the PgBouncer client it serves now
            (``None`` when it serves none).
        application: ``application_name`` as PgBouncer last passed it to the server.
    """

    backend_pid: int
    database: str
    user: str
    bouncer_state: str
    state: str | None
    query: str | None
    state_age: float | None
    client_addr: str | None
    client_port: int | None
    client_application: str | None
    application: str

    @property
    def holder(self) -> str:
        """``app@addr:port`` of the client it serves, or ``(no client)``."""
        if self.client_addr is None:
            return "(no client)"
        app = self.client_application or "(no application_name)"
        return f"{app}@{self.client_addr}:{self.client_port}"


def server_sessions(bouncer: BouncerSnapshot, postgres: Snapshot | None = None
                    ) -> tuple[ServerSession, ...]:
    """Every server connection of ``bouncer`` with its PostgreSQL session (from ``postgres``,
    when given) and the client it serves, by backend pid."""
    clients: dict[str, Connection] = {c.ptr: c for c in bouncer.clients if c.ptr}
    sessions = postgres.by_pid() if postgres is not None else {}
    out = []
    for s in bouncer.servers:
        client = clients.get(s.link) if s.link else None
        pg = sessions.get(s.remote_pid)
        out.append(ServerSession(
            backend_pid=s.remote_pid,
            database=s.database,
            user=s.user,
            bouncer_state=s.state,
            state=pg.state if pg is not None else None,
            query=pg.query if pg is not None else None,
            state_age=pg.state_age if pg is not None else None,
            client_addr=client.addr if client is not None else None,
            client_port=client.port if client is not None else None,
            client_application=client.application_name if client is not None else None,
            application=pg.application if pg is not None else s.application_name,
        ))
    return tuple(out)
