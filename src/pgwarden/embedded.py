"""Throwaway PostgreSQL clusters for the demo, the tests and the benchmarks.

``EmbeddedPostgres`` runs a private cluster on a free 127.0.0.1 port (no Unix socket, nothing
outside loopback). It uses the system's PostgreSQL binaries where they exist
(``/usr/lib/postgresql/<version>/bin``, ``pg_config --bindir``, ``$PATH``) and otherwise those of
the ``pgserver`` wheel (``pip install "pgwarden[embedded]"``).

PostgreSQL refuses to run as root ("root" execution of the PostgreSQL server is not permitted).
When this process is root, the server runs as an unprivileged system user (``postgres`` where it
exists, else ``nobody``) and its data directory is owned by that user.

Clean-up: ``close()`` (or leaving the ``with`` block, or interpreter exit) stops the server and
removes its directory. If the owning process dies without running its exit handlers (SIGKILL, a
crashed test run), a small reaper process notices within a second and does the same.

Example::

    with EmbeddedPostgres(max_connections=20) as pg:
        with psycopg.connect(pg.dsn) as conn:
            ...
        pg.restart()
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from .errors import EmbeddedError

__all__ = ["EmbeddedPostgres", "find_bin_dir", "pgserver_bin_dir"]

logger = logging.getLogger("pgwarden.embedded")

SettingValue = str | int | float | bool

#: Settings every embedded cluster gets; chosen for speed and for a loopback-only server.
_BASE_SETTINGS: dict[str, SettingValue] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": False,
    "synchronous_commit": False,
    "full_page_writes": False,
    "shared_buffers": "32MB",
    "max_wal_senders": 5,
    "wal_level": "replica",
    "log_min_messages": "warning",
    "logging_collector": False,
    "dynamic_shared_memory_type": "posix",
}

_live: weakref.WeakSet[EmbeddedPostgres] = weakref.WeakSet()


def find_bin_dir() -> Path:
    """Return the directory holding ``postgres``, ``initdb`` and ``pg_ctl``.

    Order: ``$PGWARDEN_PG_BIN``, the newest ``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``,
    ``initdb`` on ``$PATH``, then the ``pgserver`` wheel.

    Raises:
        EmbeddedError: no PostgreSQL binaries were found.
    """
    env = os.environ.get("PGWARDEN_PG_BIN")
    if env:
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for cand in candidates:
        if (Path(cand) / "postgres").exists() and (Path(cand) / "initdb").exists():
            return Path(cand)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if (Path(out) / "postgres").exists():
                return Path(out)
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "postgres").exists():
        return Path(initdb).parent
    try:
        import pgserver

        wheel_bin = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (wheel_bin / "postgres").exists():
            return wheel_bin
    except ImportError:
        pass
    raise EmbeddedError(
        "no PostgreSQL binaries found: install PostgreSQL (e.g. apt-get install postgresql) "
        'or the embedded extra (pip install "pgwarden[embedded]")'
    )


def pgserver_bin_dir() -> Path | None:
    """The ``pgserver`` wheel's PostgreSQL binaries (PostgreSQL 16), or ``None``."""
    try:
        import pgserver
    except ImportError:
        return None
    wheel_bin = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return wheel_bin if (wheel_bin / "postgres").exists() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _format_setting(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class _RunAs:
    """Who runs the server: this user, or an unprivileged one when we are root."""

    def __init__(self) -> None:
        self.uid: int | None = None
        self.gid: int | None = None
        self.name = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.uid, self.gid, self.name = entry.pw_uid, entry.pw_gid, name
                break
            else:
                raise EmbeddedError(
                    "running as root and no unprivileged user (postgres or nobody) exists "
                    "to run PostgreSQL as; create one (useradd postgres)"
                )

    def chown(self, path: Path) -> None:
        if self.uid is None or self.gid is None:
            return
        os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid)

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _usable_bin_dir(bin_dir: Path, run_as: _RunAs) -> Path:
    """Make sure the server user can execute the binaries (a wheel under /root it cannot)."""
    if run_as.uid is None:
        return bin_dir
    probe = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        check=False,
        **run_as.popen_kwargs(),
    )
    if probe.returncode == 0:
        return bin_dir
    install = bin_dir.parent
    target = Path(tempfile.gettempdir()) / f"pgwarden-pginstall-{abs(hash(str(install))):x}"
    if not (target / "bin" / "postgres").exists():
        tmp = Path(tempfile.mkdtemp(prefix="pgwarden-pginstall-"))
        shutil.copytree(install, tmp / "i", symlinks=True)
        os.chmod(tmp, 0o755)  # noqa: S103 - the server user must read PostgreSQL's binaries
        with contextlib.suppress(OSError):  # another process copied it first
            os.rename(tmp / "i", target)
        shutil.rmtree(tmp, ignore_errors=True)
        os.chmod(target, 0o755)  # noqa: S103
    return target / "bin"


class EmbeddedPostgres:
    """A private PostgreSQL cluster on 127.0.0.1.

    Args:
        max_connections: the server's ``max_connections``.
        settings: further ``postgresql.conf`` settings, e.g. ``{"idle_session_timeout": "5s"}``.
        superuser_reserved_connections: slots kept for superusers (PostgreSQL default 3).
        start: start the server at construction.
        bin_dir: PostgreSQL binaries to use (default: :func:`find_bin_dir`).

    The superuser is ``postgres`` with a random password, reachable through :attr:`dsn`.

    Raises:
        EmbeddedError: binaries missing, ``initdb`` or the server failed (the message carries
            the tail of the server log).
    """

    user = "postgres"
    host = "127.0.0.1"

    def __init__(
        self,
        *,
        max_connections: int = 100,
        superuser_reserved_connections: int = 3,
        settings: Mapping[str, SettingValue] | None = None,
        start: bool = True,
        bin_dir: Path | str | None = None,
    ) -> None:
        self._run_as = _RunAs()
        self.bin_dir = _usable_bin_dir(Path(bin_dir) if bin_dir else find_bin_dir(), self._run_as)
        self.password = secrets.token_urlsafe(16)
        self.port = _free_port()
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgwarden-pg-"))
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "server.log"
        self._settings: dict[str, SettingValue] = dict(_BASE_SETTINGS)
        self._settings["max_connections"] = max_connections
        self._settings["superuser_reserved_connections"] = superuser_reserved_connections
        self._settings.update(settings or {})
        self._reaper: subprocess.Popen[bytes] | None = None
        self._running = False
        self._closed = False
        _live.add(self)
        try:
            self._initdb()
            self._start_reaper()
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # -- connection strings -------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """Superuser conninfo (key=value form) for database ``postgres``."""
        return self.conninfo()

    @property
    def url(self) -> str:
        """Superuser ``postgresql://`` URL for database ``postgres``."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/postgres"

    def conninfo(self, **params: Any) -> str:
        """Conninfo string for this cluster; ``params`` override user, password, dbname, ..."""
        base: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": "postgres",
            "connect_timeout": 5,
        }
        base.update(params)
        return make_conninfo("", **base)

    def connect(self, **params: Any) -> psycopg.Connection[Any]:
        """An autocommit connection (superuser unless ``params`` say otherwise)."""
        return psycopg.connect(self.conninfo(**params), autocommit=True)

    def execute(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as superuser and return its rows (empty for none)."""
        with self.connect(application_name="pgwarden-embedded") as conn:
            cur = conn.execute(query.encode(), params)
            return list(cur.fetchall()) if cur.description else []

    def bin(self, name: str) -> str:
        """Path of a PostgreSQL client program (``pgbench``, ``pg_receivewal``, ...)."""
        path = self.bin_dir / name
        if path.exists():
            return str(path)
        found = shutil.which(name)
        if found:
            return found
        raise EmbeddedError(f"{name} not found next to {self.bin_dir} nor on PATH")

    # -- lifecycle ----------------------------------------------------------------------

    def _run(self, args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=str(self.base_dir),
            **self._run_as.popen_kwargs(),
        )

    def _initdb(self) -> None:
        os.chmod(self.base_dir, 0o700)
        pwfile = self.base_dir / "pw"
        pwfile.write_text(self.password + "\n")
        self._run_as.chown(self.base_dir)
        res = self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.user,
                "--pwfile", str(pwfile),
                "--auth", "scram-sha-256",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",
                "--no-instructions",
            ]
        )
        pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise EmbeddedError(f"initdb failed: {(res.stderr or res.stdout).strip()[-2000:]}")
        (self.data_dir / "pg_hba.conf").write_text(
            "# pgwarden embedded cluster: loopback only, password auth\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
        )
        self._write_settings()

    def _write_settings(self) -> None:
        lines = [f"{k} = {_format_setting(v)}" for k, v in self._settings.items()]
        lines.append(f"port = {self.port}")
        conf = self.data_dir / "pgwarden.conf"
        conf.write_text("\n".join(lines) + "\n")
        main = self.data_dir / "postgresql.conf"
        text = main.read_text()
        if "include = 'pgwarden.conf'" not in text:
            main.write_text(text + "\ninclude = 'pgwarden.conf'\n")
        self._run_as.chown(self.data_dir)

    def configure(self, settings: Mapping[str, SettingValue], *, restart: bool = False) -> None:
        """Change settings; reloads the server, or restarts it with ``restart=True``."""
        self._settings.update(settings)
        self._write_settings()
        if restart:
            self.restart()
        elif self._running:
            self.execute("select pg_reload_conf()")

    def start(self, *, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections (on the same port as before).

        Raises:
            EmbeddedError: the server did not start; carries the tail of its log.
        """
        if self._closed:
            raise EmbeddedError("cluster is closed")
        res = self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-w",
                "-t", str(int(timeout)),
                "start",
            ],
            timeout=timeout + 10,
        )
        if res.returncode != 0:
            raise EmbeddedError(
                f"PostgreSQL did not start on 127.0.0.1:{self.port}: "
                f"{(res.stderr or res.stdout).strip()}\n{self.log_tail()}"
            )
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode`` is ``smart``, ``fast`` or ``immediate`` (``pg_ctl -m``)."""
        if not self._running:
            return
        self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]
        )
        self._running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port; every session is disconnected."""
        self.stop(mode)
        self.start()

    @property
    def running(self) -> bool:
        return self._running

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server (immediately) and delete the cluster's files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            if self._running:
                self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._reaper is not None and self._reaper.poll() is None:
            self._reaper.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(timeout=5)
        _live.discard(self)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<EmbeddedPostgres 127.0.0.1:{self.port} {state}>"

    # -- crash clean-up -----------------------------------------------------------------

    def _start_reaper(self) -> None:
        code = (
            "import sys; from pgwarden.embedded import _reap; "
            "_reap(int(sys.argv[1]), sys.argv[2], sys.argv[3])"
        )
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", code, str(os.getpid()), str(self.base_dir), str(self.bin_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )


def _reap(parent_pid: int, base_dir: str, bin_dir: str) -> None:
    """Reaper process: once ``parent_pid`` is gone, stop the cluster and delete its files."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        time.sleep(0.5)
    data_dir = Path(base_dir) / "data"
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(Exception):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
    shutil.rmtree(base_dir, ignore_errors=True)


@atexit.register
def _close_all() -> None:
    for cluster in list(_live):
        cluster.close()

