"""The server side's one look at PostgreSQL: sessions, settings, headroom.

``take(conn)`` returns a :class:`Snapshot`; the doctor's rules, the guard's policy and the status
view are pure functions of it.
"""

from __future__ import annotations

from .records import Server, Session, Settings, Snapshot
from .snapshot import (
    application_counts,
    new_sessions,
    read_server,
    read_settings,
    role_secrets,
    take,
)

__all__ = [
    "Server",
    "Session",
    "Settings",
    "Snapshot",
    "application_counts",
    "new_sessions",
    "read_server",
    "read_settings",
    "role_secrets",
    "take",
]
