"""The guard's loop: a pass every ``interval`` seconds, reconnect with backoff, reload, stop.

- **Interval**: ``policy.interval`` seconds between the start of one wait and the next pass.
- **Connection loss** (server restart, network): the pass fails, the guard waits with
  exponential backoff (``backoff_initial`` doubling up to ``backoff_max`` seconds, +-20 %
  jitter) and reconnects at the next pass; the lock is taken again (or by another guard).
- **A full server**: the guard keeps its one connection open between passes, so once connected
  it keeps its slot however full the server gets. To connect *into* a full server it needs a
  reserved slot: superusers get ``superuser_reserved_connections``, members of
  ``pg_use_reserved_connections`` (PostgreSQL 16+) get ``reserved_connections``; other roles
  retry with backoff until a slot frees up.
- **SIGHUP** reloads the configuration through the ``load`` callable (a bad file is logged and
  the old policy kept); audit files are reopened (log rotation).
- **SIGTERM / SIGINT** end the loop after the current pass; the lock is released and the
  session closed (:attr:`Daemon.stopped_by` says which; the CLI exits 0 after SIGTERM, 130
  after SIGINT).
- **The audit log** cannot be written: :class:`~pgwarden.errors.AuditError` ends the loop at
  once (the guard never acts without a record).

Signal handlers are installed only by :meth:`Daemon.run` with ``install_signals=True`` (from the
main thread, as the CLI does); otherwise call :meth:`Daemon.stop` / :meth:`Daemon.reload`.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, TextIO

import psycopg

from ..conninfo import Target
from ..errors import ConfigError, ConnectError, PermissionMissing
from .audit import AuditLog
from .metrics import GuardMetrics
from .policy import Policy
from .runner import LOCK_KEY, Guard, PassResult

__all__ = ["Daemon"]

logger = logging.getLogger("pgwarden.guard")


class Daemon:
    """Runs :class:`~pgwarden.guard.Guard` passes until stopped.

    Args:
        target: as for :class:`Guard` (Target, DSN, None, or an open connection).
        policy: the starting policy (its ``enforce``, ``interval``, ``audit_log`` apply).
        load: called on reload; returns the new policy (raise ``ConfigError`` to keep the old).
        audit: extra audit destinations (paths, ``-``, streams) besides ``policy.audit_log``.
        metrics: counters (default new); kept across reloads.
        on_pass: called with each :class:`PassResult`.
        backoff_initial, backoff_max: seconds of the reconnect backoff.
        lock_key: advisory lock key (see :data:`LOCK_KEY`).
        connect_timeout: seconds.
    """

    def __init__(
        self,
        target: Target | str | psycopg.Connection[Any] | None,
        policy: Policy,
        *,
        load: Callable[[], Policy] | None = None,
        audit: Iterable[str | TextIO] = (),
        metrics: GuardMetrics | None = None,
        on_pass: Callable[[PassResult], None] | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        lock_key: int = LOCK_KEY,
        connect_timeout: float = 5.0,
    ) -> None:
        self.policy = policy
        self._load = load
        self._extra_audit = tuple(audit)
        self.metrics = metrics if metrics is not None else GuardMetrics()
        self._on_pass = on_pass
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self.passes = 0
        self.failures = 0
        #: the signal that stopped :meth:`run` (``signal.SIGTERM`` / ``SIGINT``), else None
        self.stopped_by: int | None = None
        self.last_result: PassResult | None = None
        self.last_error: str | None = None
        self.guard = Guard(
            target,
            policy,
            audit=(*policy.audit_log, *self._extra_audit),  # owned (closed) by the guard
            metrics=self.metrics,
            lock_key=lock_key,
            connect_timeout=connect_timeout,
        )

    def _audit_for(self, policy: Policy) -> AuditLog:
        return AuditLog((*policy.audit_log, *self._extra_audit))

    # -- control (thread-safe, signal-safe) ----------------------------------------------

    def stop(self) -> None:
        """End the loop after the current pass (wakes it from its wait)."""
        self._stop.set()
        self._wake.set()

    def reload(self) -> None:
        """Reload the configuration before the next pass (wakes the loop from its wait)."""
        self._reload.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- loop ---------------------------------------------------------------------------

    def _do_reload(self) -> None:
        self._reload.clear()
        if self._load is None:
            return
        try:
            policy = self._load()
        except ConfigError as exc:
            logger.error("guard reload failed, keeping the previous configuration: %s", exc)
            return
        old_audit = self.guard.audit
        try:
            self.guard.audit = self._audit_for(policy)
        except OSError as exc:
            logger.error("guard reload failed, cannot open the audit log: %s", exc)
            return
        old_audit.close()
        self.policy = policy
        self.guard.policy = policy
        self.guard.enforce = policy.enforce
        logger.warning("guard configuration reloaded (%s, every %gs)",
                       "enforcing" if policy.enforce else "dry run", policy.interval)

    def run(self, *, max_passes: int | None = None, install_signals: bool = False) -> int:
        """Loop until :meth:`stop` (or SIGTERM/SIGINT), or ``max_passes`` passes were tried.

        Returns:
            The number of passes that completed.

        Raises:
            PermissionMissing: the role lacks a privilege (not worth retrying).
            AuditError: an audit destination cannot be written (the guard stops before it
                acts without a record).
        """
        previous: dict[int, Any] = {}
        if install_signals:
            def on_stop(signum: int, frame: FrameType | None) -> None:
                self.stopped_by = signum
                self.stop()  # no logging here: a signal handler must not take locks

            def on_hup(signum: int, frame: FrameType | None) -> None:
                self.reload()

            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_stop)
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_stop)
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
        backoff = self.backoff_initial
        tried = 0
        try:
            while not self._stop.is_set():
                if max_passes is not None and tried >= max_passes:
                    break
                if self._reload.is_set():
                    self._do_reload()
                tried += 1
                try:
                    result = self.guard.run_pass()
                except PermissionMissing:
                    raise
                except (ConnectError, psycopg.OperationalError) as exc:
                    self.failures += 1
                    self.last_error = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
                    if not isinstance(exc, ConnectError):
                        self.metrics.record_error()
                    wait = backoff * random.uniform(0.8, 1.2)
                    logger.warning("guard pass failed (%s); retrying in %.1fs",
                                   self.last_error, wait)
                    backoff = min(backoff * 2, self.backoff_max)
                except psycopg.Error as exc:
                    self.failures += 1
                    self.metrics.record_error()
                    self.last_error = str(exc).strip()
                    logger.error("guard pass failed: %s", self.last_error)
                    wait = self.policy.interval
                else:
                    self.passes += 1
                    self.last_result = result
                    backoff = self.backoff_initial
                    wait = self.policy.interval
                    if self._on_pass is not None:
                        self._on_pass(result)
                if self._stop.is_set() or (max_passes is not None and tried >= max_passes):
                    break
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.guard.close()
        return self.passes

    def start_thread(self, **kwargs: Any) -> threading.Thread:
        """Run :meth:`run` in a daemon thread (for tests and embedding); stop with :meth:`stop`."""
        t = threading.Thread(target=self._run_quietly, kwargs=kwargs, daemon=True,
                             name="pgwarden-guard")
        t.start()
        return t

    def _run_quietly(self, **kwargs: Any) -> None:
        try:
            self.run(**kwargs)
        except Exception as exc:
            self.last_error = str(exc)
            logger.error("guard stopped: %s", exc)
