"""Load the SQL in ``queries/*.sql``: one statement a file, picked by server version.

A file ``get_x_post_NNNNNN.sql`` replaces ``get_x.sql`` on servers whose ``server_version_num``
is at least ``NNNNNN`` (the convention of pg_activity). Values are bound as parameters.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["load", "query"]

_POST_RE = re.compile(r"^(?P<name>[a-z_]+?)(?:_post_(?P<version>\d{6}))?\.sql$")


@functools.cache
def _index() -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for entry in resources.files(__package__).joinpath("queries").iterdir():
        m = _POST_RE.match(entry.name)
        if not m:
            continue
        version = int(m.group("version") or 0)
        out.setdefault(m.group("name"), []).append((version, entry.read_text(encoding="utf-8")))
    for variants in out.values():
        variants.sort(reverse=True)
    return out


def load(name: str, server_version_num: int) -> str | None:
    """The text of query ``name`` for a server of ``server_version_num`` (e.g. 150004).

    Returns ``None`` where no variant applies (the feature is newer than the server).

    Raises:
        KeyError: no query of that name exists at all.
    """
    variants = _index()[name]
    for version, text in variants:
        if server_version_num >= version:
            return text
    return None


def query(name: str, server_version_num: int) -> bytes:
    """Like :func:`load`, for a query that must exist on this server: the statement as bytes.

    Raises:
        KeyError: no query of that name exists.
        LookupError: no variant applies to ``server_version_num``.
    """
    text = load(name, server_version_num)
    if text is None:
        raise LookupError(f"query {name} does not apply to server version {server_version_num}")
    return text.encode()
