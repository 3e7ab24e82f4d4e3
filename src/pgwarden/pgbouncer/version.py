"""PgBouncer versions: parse them, compare them, find the installed one.

PgBouncer prints ``PgBouncer 1.18.0`` (``pgbouncer --version``, first line), its admin console
answers ``SHOW VERSION`` with the same text, and its console's ``server_version``
ParameterStatus is ``1.18.0/bouncer``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["Version", "find_binary", "installed_version", "parse_given_version",
           "parse_version"]

_VERSION_RE = re.compile(r"(?:PgBouncer\s+)?(\d+)\.(\d+)(?:\.(\d+))?", re.IGNORECASE)

#: Where Debian and most distributions install the binary (it is in /usr/sbin, off a normal
#: user's PATH).
_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A PgBouncer version, ordered: ``Version(1, 21) <= Version(1, 22, 1)``."""

    major: int
    minor: int
    patch: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return self >= Version(major, minor, patch)


def parse_version(text: str) -> Version:
    """The version in ``PgBouncer 1.18.0``, ``1.18.0/bouncer`` or ``1.22``.

    Raises:
        ValueError: no version number in ``text``.
    """
    m = _VERSION_RE.search(text or "")
    if not m:
        raise ValueError(f"not a PgBouncer version: {text[:80]!r}")
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


_GIVEN_RE = re.compile(r"^\s*(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?\s*$")


def parse_given_version(text: str) -> Version:
    """A version a user names (``1.22``, ``1.22.1``): nothing but the number, 1.0 or later
    (PgBouncer's first release was 1.0).

    Raises:
        ValueError: anything else.
    """
    m = _GIVEN_RE.match(text or "")
    version = Version(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None
    if version is None or version < Version(1, 0):
        raise ValueError(f"expected a PgBouncer version like 1.22 or 1.22.1 (1.0 or later), "
                         f"got {text[:80]!r}")
    return version


def find_binary() -> str | None:
    """Path of the ``pgbouncer`` program (``$PGWARDEN_PGBOUNCER``, ``$PATH``, then /usr/sbin,
    /usr/bin, /usr/local/bin), or ``None`` when it is not installed (or
    ``$PGWARDEN_PGBOUNCER`` names no program)."""
    env = os.environ.get("PGWARDEN_PGBOUNCER")
    if env:
        return env if shutil.which(env) else None
    found = shutil.which("pgbouncer")
    if found:
        return found
    for cand in _CANDIDATES:
        if shutil.which(cand):
            return cand
    return None


def installed_version(binary: str | None = None) -> Version | None:
    """The version of the installed ``pgbouncer`` (``pgbouncer --version``), or ``None`` when
    it is not installed or does not answer."""
    binary = binary or find_binary()
    if binary is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
        return parse_version(out.splitlines()[0] if out else "")
    return None
