"""The I/O-free core shared by the sync and the asyncio pool.

Every rule is written here once: configuration and its validation, connection defaults, the
validation window, generations, the reconnect cadence, leak detection, reset-on-return rules,
stats and the text of the timeout error. The shells (:mod:`.sync`, :mod:`.aio`) only wait, lock
and do I/O. Core methods that change state must be called with the shell's lock held (the sync
pool) or from the event loop thread (the asyncio pool).
"""

from __future__ import annotations

import logging
import os
import random
import select
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from ..conninfo import check_values, redact
from ..diagnose import classify
from ..errors import ConfigError, PoolTimeout
from .holders import Holder, RawStack, format_location, holder_name, summarize

logger = logging.getLogger("pgwarden.pool")

TS = pq.TransactionStatus
CONN_OK = pq.ConnStatus.OK

#: Seconds since last use under which a checkout skips the validation round trip
#: (HikariCP skips it for 500 ms; we check the socket for pending data on *every* checkout,
#: which catches everything the server told us about, so the round trip only has to cover silent
#: peer loss: 2 s).
DEFAULT_VALIDATION_WINDOW = 2.0
#: Seconds a validation round trip may take before the connection is declared dead
#: (HikariCP's ``validationTimeout`` default is 5 s).
DEFAULT_VALIDATION_TIMEOUT = 5.0
#: Seconds a checkout may be held before it is reported as a leak.
DEFAULT_LEAK_THRESHOLD = 60.0

#: Reconnect cadence while callers wait and the server refuses: uniform jitter in this range
#: between the starts of two attempts, one attempt in flight at a time -> at most 100 attempts/s
#: per pool, 40/s on average (psycopg_pool: 1 s doubling; HikariCP: 250 ms fixed).
FAST_RETRY_MIN = 0.010
FAST_RETRY_MAX = 0.040
#: Reconnect cadence with nobody waiting: exponential from 0.5 s, doubling, capped at 10 s,
#: jittered +-25%.
SLOW_RETRY_BASE = 0.5
SLOW_RETRY_MAX = 10.0
#: After "too many clients" (SQLSTATE 53300, or PostgreSQL's "remaining connection slots are
#: reserved" for an ordinary role) the pool keeps one attempt in flight this often (+-25 %),
#: whether callers wait or not, and grows again as soon as one succeeds.
FULL_RETRY = 1.0
#: While the server rejects the pool (a wrong password, a missing role or database, pg_hba.conf)
#: retrying fast cannot help: one attempt after this many seconds, doubling up to
#: REJECTED_RETRY_MAX, waiting callers or not (+-25 %).
REJECTED_RETRY = 2.0
REJECTED_RETRY_MAX = 30.0
#: An attempt in flight this long without an answer is reported as "no answer" (the server is
#: down or unreachable, or something in front of it accepts connections and never answers).
NO_ANSWER_AFTER = 1.0

_TX_STATE = {
    TS.IDLE: "idle",
    TS.ACTIVE: "active",
    TS.INTRANS: "idle in transaction",
    TS.INERROR: "idle in transaction (aborted)",
    TS.UNKNOWN: "broken",
}

#: Connection defaults applied where the DSN, ``kwargs`` and the PG* environment set none.
#: Keepalives: an idle dead peer is noticed after 10 + 3 * 5 = 25 s; tcp_user_timeout: unacked
#: data for 20 s drops the connection (libpq defaults: the kernel's, ~2 h 11 min).
TCP_DEFAULTS: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
    "connect_timeout": "5",
}
_ENV_FOR = {
    "keepalives": None,
    "keepalives_idle": None,
    "keepalives_interval": None,
    "keepalives_count": None,
    "tcp_user_timeout": None,
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
}


def default_application_name() -> str:
    """``$PGWARDEN_APPLICATION_NAME``, else ``<script name>-<pid>`` (63 bytes at most)."""
    env = os.environ.get("PGWARDEN_APPLICATION_NAME")
    if env:
        return env[:63]
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if script.endswith(".py"):
        script = script[:-3]
    if script in ("", "-c", "-m", "__main__"):
        script = "python"
    suffix = f"-{os.getpid()}"
    return script[: 63 - len(suffix)] + suffix


def connection_defaults(conninfo: str, kwargs: dict[str, Any]) -> dict[str, str]:
    """The default conninfo parameters to add: those set neither in ``conninfo``, ``kwargs``
    nor the PG* environment."""
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigError(f"malformed conninfo {redact(conninfo)!r}: {exc}") from None
    out: dict[str, str] = {}
    for key, value in {**TCP_DEFAULTS, "application_name": ""}.items():
        if key in given or key in kwargs:
            continue
        env = _ENV_FOR.get(key)
        if env and os.environ.get(env):
            continue
        out[key] = value
    return out


def static_defaults(config: Config) -> dict[str, str] | None:
    """Defaults computed once, or ``None`` when conninfo/kwargs are callables (per connect)."""
    if not config.connection_defaults:
        return {}
    if callable(config.conninfo) or callable(config.kwargs):
        return None
    return connection_defaults(config.conninfo, config.kwargs)


def connect_params(conninfo: str, kwargs: dict[str, Any], defaults: dict[str, str] | None,
                   config: Config) -> dict[str, Any]:
    """Keyword arguments for ``connect()``: ``kwargs`` plus the defaults they lack."""
    kw = dict(kwargs)
    if defaults is None:
        defaults = connection_defaults(conninfo, kwargs) if config.connection_defaults else {}
    if "application_name" in defaults:
        defaults = {**defaults, "application_name": default_application_name()}
    kw.update(defaults)
    return kw


def tx_state(conn: Any) -> str:
    try:
        return _TX_STATE.get(conn.pgconn.transaction_status, "broken")
    except Exception:
        return "broken"


#: SQLSTATEs of the server ending a session on its own: admin_shutdown (a shutdown, or
#: pg_terminate_backend) and crash_shutdown (PostgreSQL docs, Appendix A, class 57)
SESSION_ENDED = frozenset({"57P01", "57P02"})


def ended_by_server(exc: BaseException, conn: Any) -> bool:
    """Whether a statement failed because the server ended the session (57P01, 57P02, or the
    connection was lost with no message), not because of the statement."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return sqlstate in SESSION_ENDED
    return isinstance(exc, psycopg.OperationalError) and conn.pgconn.status != CONN_OK


def going_down(exc: BaseException) -> str | None:
    """Why the server is going down, if a connection attempt failed with ``exc`` because it is
    shutting down, starting up or in recovery (57P03) or cannot be reached; None if it refused
    this client (a bad password, too many clients, ...) or if ``exc`` is not a connection error.
    The meaning comes from :func:`pgwarden.diagnose.classify`."""
    if not isinstance(exc, psycopg.OperationalError):
        return None
    kind = classify(exc, connecting=True).kind
    return _first_line(exc) if kind in ("going_down", "unreachable") else None


def log_replayed(pool_name: str, old: Slot, new: Slot, why: str) -> None:
    logger.info(
        "pool %r: the server ended connection pid %d during the first statement after checkout "
        "by %s at %s and is going down (%s); ran the statement again on connection pid %d "
        "(it had opened its own transaction, so nothing was committed)", pool_name, old.pid,
        holder_name(old.holder), format_location(old.stack), why, new.pid)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _check_seconds(name: str, value: float | None, *, allow_none: bool = False,
                   allow_zero: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")


def check_sizes(min_size: int, max_size: int | None) -> tuple[int, int]:
    """Validate ``min_size``/``max_size`` (psycopg_pool rules: ``max_size`` defaults to
    ``min_size``, ``0 <= min_size <= max_size``, ``max_size > 0``)."""
    if max_size is None:
        max_size = min_size
    for label, v in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{label} must be an int, got {v!r}")
    if min_size < 0:
        raise ConfigError(f"min_size must be >= 0, got {min_size}")
    if max_size < min_size:
        raise ConfigError(f"max_size ({max_size}) must be >= min_size ({min_size})")
    if max_size == 0:
        raise ConfigError("max_size must be > 0")
    return min_size, max_size


@dataclass(slots=True)
class Config:
    """Validated pool settings (see :class:`pgwarden.pool.ConnectionPool` for each)."""

    conninfo: Any  # str, or a callable returning one (psycopg_pool 3.3)
    kwargs: Any  # dict, or a callable returning one
    min_size: int
    max_size: int
    name: str
    timeout: float
    max_waiting: int
    max_lifetime: float
    max_idle: float
    reconnect_timeout: float
    num_workers: int
    leak_threshold: float | None
    validation_window: float
    validation_timeout: float
    connection_defaults: bool


_num_pool = 0


def make_config(
    *,
    conninfo: Any,
    kwargs: Any,
    min_size: int,
    max_size: int | None,
    name: str | None,
    timeout: float,
    max_waiting: int,
    max_lifetime: float,
    max_idle: float,
    reconnect_timeout: float,
    num_workers: int,
    leak_threshold: float | None,
    validation_window: float,
    validation_timeout: float,
    connection_defaults: bool,
) -> Config:
    global _num_pool
    min_size, max_size = check_sizes(min_size, max_size)
    if not isinstance(conninfo, str) and not callable(conninfo):
        raise ConfigError("conninfo must be a string (a postgresql:// URL or key=value pairs) "
                          "or a callable returning one")
    if kwargs is not None and not isinstance(kwargs, dict) and not callable(kwargs):
        raise ConfigError("kwargs must be a dict or a callable returning one")
    if isinstance(conninfo, str):
        try:
            check_values(conninfo_to_dict(conninfo), "the pool's conninfo")
        except psycopg.Error as exc:
            raise ConfigError(f"malformed conninfo {redact(conninfo)!r}: {exc}") from None
    if isinstance(kwargs, dict):
        check_values(kwargs, "the pool's kwargs")
    _check_seconds("timeout", timeout)
    _check_seconds("max_lifetime", max_lifetime)
    _check_seconds("max_idle", max_idle)
    _check_seconds("reconnect_timeout", reconnect_timeout)
    _check_seconds("leak_threshold", leak_threshold, allow_none=True)
    _check_seconds("validation_window", validation_window, allow_zero=True)
    _check_seconds("validation_timeout", validation_timeout)
    if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
        raise ConfigError(f"max_waiting must be an int >= 0 (0: unbounded), got {max_waiting!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if name is None:
        _num_pool += 1
        name = f"pool-{_num_pool}"
    return Config(
        conninfo=conninfo,
        kwargs=kwargs if callable(kwargs) else dict(kwargs or {}),
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=float(timeout),
        max_waiting=max_waiting,
        max_lifetime=float(max_lifetime),
        max_idle=float(max_idle),
        reconnect_timeout=float(reconnect_timeout),
        num_workers=num_workers,
        leak_threshold=None if not leak_threshold else float(leak_threshold),
        validation_window=float(validation_window),
        validation_timeout=float(validation_timeout),
        connection_defaults=connection_defaults,
    )


class ConnRef(weakref.ref):  # type: ignore[type-arg]
    """Weak reference to a checked-out connection that knows its slot (for GC reclaim)."""

    __slots__ = ("slot",)
    slot: Slot


class Slot:
    """One connection the pool owns. ``conn`` is a strong reference only while idle."""

    __slots__ = (
        "__weakref__", "conn", "created_at", "dead", "expire_at", "gen", "holder", "last_used",
        "leak_reported", "out", "out_at", "pid", "poller", "ref", "stack",
    )

    def __init__(self, conn: Any, gen: int, now: float, expire_at: float) -> None:
        self.conn: Any = conn
        self.ref: ConnRef | None = None
        self.pid: int = conn.pgconn.backend_pid
        # one poll object per connection: the per-checkout "did the server say something?"
        # check is then a single syscall
        self.poller = select.poll()
        self.poller.register(conn.pgconn.socket, select.POLLIN)
        self.gen = gen
        self.created_at = now
        self.expire_at = expire_at
        self.last_used = now
        self.out_at = 0.0
        self.holder: str | int = ""  # task name, or thread ident (named when reported)
        self.stack: RawStack = ()
        self.leak_reported = False
        self.out = False
        self.dead = False


class Stats:
    """Counters (psycopg_pool's names, plus pgwarden's); see docs/pool.md for the table."""

    __slots__ = (
        "connections_errors",
        "connections_lost",
        "connections_ms",
        "connections_num",
        "connections_reclaimed",
        "generations_invalidated",
        "leaks_detected",
        "leaks_unleaked",
        "requests_errors",
        "requests_num",
        "requests_queued",
        "requests_wait_ms",
        "returns_bad",
        "returns_rolled_back",
        "statements_replayed",
        "usage_ms",
        "validations_failed",
        "validations_num",
    )

    KEYS = (
        "requests_num",
        "requests_queued",
        "requests_wait_ms",
        "requests_errors",
        "returns_bad",
        "connections_num",
        "connections_ms",
        "connections_errors",
        "connections_lost",
        "usage_ms",
        "leaks_detected",
        "leaks_unleaked",
        "connections_reclaimed",
        "returns_rolled_back",
        "validations_num",
        "validations_failed",
        "generations_invalidated",
        "statements_replayed",
    )

    def __init__(self) -> None:
        self.requests_num = 0
        self.requests_queued = 0
        self.requests_wait_ms: float = 0
        self.requests_errors = 0
        self.returns_bad = 0
        self.connections_num = 0
        self.connections_ms: float = 0
        self.connections_errors = 0
        self.connections_lost = 0
        self.usage_ms: float = 0
        self.leaks_detected = 0
        self.leaks_unleaked = 0
        self.connections_reclaimed = 0
        self.returns_rolled_back = 0
        self.validations_num = 0
        self.validations_failed = 0
        self.generations_invalidated = 0
        self.statements_replayed = 0

    def as_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in self.KEYS}


class Core:
    """Pool state and every decision about it (no I/O, no waiting)."""

    def __init__(self, config: Config, pool: Any) -> None:
        self.config = config
        self.pool_ref = weakref.ref(pool)
        self.idle: list[Slot] = []  # LIFO: the most recently used connection is reused first
        self.slots: set[Slot] = set()  # every open connection (idle and checked out)
        self.waiters: deque[Any] = deque()
        self.size = 0  # open connections: idle + checked out
        self.connecting = 0
        self.gen = 0
        self.drain_gen = 0
        self.stats = Stats()
        self.gc_queue: deque[Slot] = deque()
        # reconnect state
        self.failures = 0
        self.first_failure_at = 0.0
        self.last_attempt_at = 0.0
        self.last_error: str | None = None
        self.last_error_at = 0.0
        #: what the failing attempts mean (pgwarden.diagnose.KINDS), None while connecting works
        self.failure_kind: str | None = None
        self.reconnect_failed_called = False
        self.lifetime_jitter = 0.1

    @property
    def server_full(self) -> bool:
        """The last attempts failed for lack of a slot on the server."""
        return self.failure_kind == "server_full"

    # -- sizes ----------------------------------------------------------------------

    def target(self) -> str:
        c = self.config.conninfo
        return redact(c) if isinstance(c, str) else "<conninfo callable>"

    def expire_at(self, now: float) -> float:
        """max_lifetime minus up to 10 % jitter (psycopg_pool: 5 %), so a pool filled at once
        does not expire at once."""
        return now + self.config.max_lifetime * (1.0 - random.uniform(0, self.lifetime_jitter))

    def to_start(self, now: float) -> int:
        """How many connection attempts to start now (they must be started by the shell and
        ``connecting`` is already incremented)."""
        cfg = self.config
        want = max(len(self.waiters), cfg.min_size - self.size) - self.connecting
        if want <= 0:
            return 0
        room = cfg.max_size - self.size - self.connecting
        # while the server refuses: one attempt in flight per pool
        slots = (1 if self.failures else cfg.num_workers) - self.connecting
        n = max(0, min(want, room, slots))
        self.connecting += n
        return n

    def retry_delay(self, now: float) -> float:
        """Seconds to wait before the next connection attempt (0 when healthy). The cadence
        depends on what the failures mean (:func:`pgwarden.diagnose.classify`): a full server
        about once a second, a rejected client slowly, an unreachable server fast while callers
        wait (it may be back any moment) and with backoff otherwise."""
        if not self.failures:
            return 0.0
        kind = self.failure_kind
        if kind == "server_full":
            d = FULL_RETRY * random.uniform(0.75, 1.25)
        elif kind in ("rejected", "invalid"):
            d = min(REJECTED_RETRY_MAX, REJECTED_RETRY * 2 ** min(self.failures - 1, 10))
            d *= random.uniform(0.75, 1.25)
        elif self.waiters:
            d = random.uniform(FAST_RETRY_MIN, FAST_RETRY_MAX)
        else:
            d = min(SLOW_RETRY_MAX, SLOW_RETRY_BASE * 2 ** min(self.failures - 1, 10))
            d *= random.uniform(0.75, 1.25)
        return max(0.0, self.last_attempt_at + d - now)

    def still_wanted(self) -> bool:
        """Whether a connection attempt that is about to start (or retry) is still needed."""
        cfg = self.config
        want = max(len(self.waiters), cfg.min_size - self.size)
        if self.failures and not self.waiters and self.reconnect_failed_called:
            return False  # gave up on min_size maintenance; callers will ask again
        return want > 0 and self.size < cfg.max_size

    def connect_started(self, now: float) -> None:
        self.last_attempt_at = now

    def connect_failed(self, exc: BaseException, now: float) -> bool:
        """Record a failed attempt; return True when ``reconnect_failed`` should be called."""
        self.stats.connections_errors += 1
        if not self.failures:
            self.first_failure_at = now
        self.failures += 1
        self.last_error = _first_line(exc)
        self.last_error_at = now
        kind = classify(exc, connecting=True).kind
        if kind != self.failure_kind:
            self.failure_kind = kind
            name = self.config.name
            if kind == "server_full":
                logger.warning(
                    "pool %r: the server has no free connection slot (%s); %d connections "
                    "open, retrying about once a second", name, self.last_error, self.size)
            elif kind in ("rejected", "invalid"):
                logger.warning(
                    "pool %r: the server rejects the connection (%s to %s); retrying every "
                    "%g s or more, not faster: fix the credentials or the DSN", name,
                    self.last_error, self.target(), REJECTED_RETRY)
            else:
                logger.warning("pool %r: connection attempt failed (%s to %s); retrying",
                               name, self.last_error, self.target())
        if (
            not self.reconnect_failed_called
            and now - self.first_failure_at >= self.config.reconnect_timeout
        ):
            self.reconnect_failed_called = True
            return True
        return False

    def connect_ok(self, conn: Any, now: float, elapsed: float,
                   on_collected: Callable[[ConnRef], None]) -> Slot:
        if self.failures:
            logger.info("pool %r: connected again after %d failed attempts in %.2f s",
                        self.config.name, self.failures, now - self.first_failure_at)
        self.failures = 0
        self.failure_kind = None
        self.reconnect_failed_called = False
        self.stats.connections_num += 1
        self.stats.connections_ms += elapsed * 1000.0
        self.size += 1
        slot = Slot(conn, self.gen, now, self.expire_at(now))
        self.slots.add(slot)
        ref = ConnRef(conn, on_collected)
        ref.slot = slot
        slot.ref = ref
        return slot

    # -- checkout ---------------------------------------------------------------------

    def needs_probe(self, slot: Slot, now: float) -> bool:
        """Whether a checkout must validate with a round trip (idle past the window, or older
        than the last detected disconnect)."""
        return slot.gen < self.gen or now - slot.last_used > self.config.validation_window

    def validation_failed(self, slot: Slot, why: str) -> None:
        """A connection failed validation (checkout or ``check()``): it was lost while idle."""
        self.stats.validations_failed += 1
        self.stats.connections_lost += 1
        self.disconnect_detected(slot, why)

    def disconnect_detected(self, slot: Slot | None, why: str) -> None:
        """First sign of a disconnect: the whole older generation of idle connections must be
        validated before use (they are discarded on checkout if dead)."""
        if slot is not None and slot.gen < self.gen:
            return  # already invalidated with its generation
        self.gen += 1
        self.stats.generations_invalidated += 1
        logger.info("pool %r: %s; validating the %d idle connections opened before it",
                    self.config.name, why, len(self.idle))

    def may_replay(self, slot: Slot | None, closed: bool, exc: BaseException, conn: Any) -> bool:
        """Whether a first statement that failed with ``exc`` on checked-out ``conn`` is worth
        asking the server about (see :mod:`pgwarden.pool.connection`)."""
        return (slot is not None and slot.out and not slot.dead and not closed
                and ended_by_server(exc, conn))

    def session_ended(self, slot: Slot, now: float) -> int:
        """The server ended a checked-out connection's session while going down: its slot is
        freed (for the new session the statement will run on). Returns connections to start."""
        self.stats.connections_lost += 1
        self.disconnect_detected(slot, f"connection pid {slot.pid} ended by the server")
        self.discard(slot)
        return self.to_start(now)

    def replayed(self) -> None:
        self.stats.statements_replayed += 1
        self.stats.requests_num -= 1  # the wait for a new session is not a new request

    def take_out(self, slot: Slot, now: float, holder: str | int, stack: RawStack) -> None:
        slot.out = True
        slot.out_at = now
        slot.holder = holder
        slot.stack = stack
        slot.leak_reported = False
        slot.conn = None

    def returned(self, slot: Slot, now: float) -> bool:
        """Bookkeeping of a return; True if it had been reported as a leak."""
        slot.out = False
        slot.last_used = now
        self.stats.usage_ms += (now - slot.out_at) * 1000.0
        if slot.leak_reported:
            self.stats.leaks_unleaked += 1
            return True
        return False

    def discard(self, slot: Slot) -> None:
        """A connection leaves the pool (closed by the shell)."""
        if slot.dead:
            return
        slot.dead = True
        self.size -= 1
        self.slots.discard(slot)

    def reusable(self, slot: Slot, now: float) -> bool:
        return (slot.gen >= self.drain_gen and slot.expire_at > now
                and self.size <= self.config.max_size)

    # -- maintenance ----------------------------------------------------------------

    def expired_idle(self, now: float) -> list[Slot]:
        """Idle connections past max_lifetime, or idle past max_idle above min_size."""
        cfg = self.config
        out: list[Slot] = []
        keep: list[Slot] = []
        spare = self.size - cfg.min_size
        for slot in self.idle:  # oldest-used first (LIFO list)
            if slot.expire_at <= now or slot.gen < self.drain_gen:
                out.append(slot)
            elif spare > 0 and now - slot.last_used > cfg.max_idle:
                out.append(slot)
                spare -= 1
            else:
                keep.append(slot)
        self.idle = keep
        for slot in out:
            self.discard(slot)
        return out

    def leak_scan(self, now: float) -> list[Slot]:
        thr = self.config.leak_threshold
        if thr is None:
            return []
        found = []
        for slot in list(self.slots):
            if slot.out and not slot.leak_reported and now - slot.out_at > thr:
                slot.leak_reported = True
                self.stats.leaks_detected += 1
                found.append(slot)
        return found

    def reclaim_collected(self) -> list[Slot]:
        found = []
        while self.gc_queue:
            slot = self.gc_queue.popleft()
            if slot.out and not slot.dead:
                slot.out = False
                self.discard(slot)
                self.stats.connections_reclaimed += 1
                found.append(slot)
        return found

    def discard_idle(self) -> list[Slot]:
        """Take every idle connection out of the pool (close, drain); the caller closes them."""
        idle, self.idle = self.idle, []
        for slot in idle:
            self.discard(slot)
        return idle

    def drain(self) -> list[Slot]:
        """psycopg_pool 3.3's ``drain``: every connection opened so far is retired (idle ones
        now, checked-out ones on return). Returns the idle slots to close."""
        self.gen += 1
        self.drain_gen = self.gen
        return self.discard_idle()

    def resize(self, min_size: int, max_size: int) -> list[Slot]:
        """New sizes (already checked); returns the surplus idle slots to close (surplus
        checked-out ones are discarded on return)."""
        self.config.min_size = min_size
        self.config.max_size = max_size
        surplus = []
        while self.size > max_size and self.idle:
            slot = self.idle.pop(0)
            self.discard(slot)
            surplus.append(slot)
        return surplus

    def init_timeout_error(self, timeout: float) -> PoolTimeout:
        """``wait()`` gave up: how many connections opened and the last connection error."""
        err = self.last_error
        detail = f": last connection error: {err}" if err else ""
        return PoolTimeout(
            f"pool {self.config.name!r} initialization incomplete after {timeout:.2f} s: "
            f"{self.size} of min_size={self.config.min_size} connections open{detail}"
        )

    def pop_stats(self) -> dict[str, int]:
        """``get_stats()``, then reset the counters (psycopg_pool's ``pop_stats``)."""
        rv = self.get_stats()
        self.stats = Stats()
        return rv

    # -- reporting ------------------------------------------------------------------

    def holder_of(self, slot: Slot, now: float, wall: float) -> Holder | None:
        ref = slot.ref
        conn = ref() if ref is not None else None
        if not slot.out:
            return None
        return Holder(
            pool=self.config.name,
            pid=slot.pid,
            holder=holder_name(slot.holder),
            started_at=wall - (now - slot.out_at),
            held_for=now - slot.out_at,
            transaction_state=tx_state(conn) if conn is not None else "broken",
            location=format_location(slot.stack),
            stack=summarize(slot.stack),
            leaked=slot.leak_reported,
        )

    def holders(self) -> list[Holder]:
        now, wall = time.monotonic(), time.time()
        out = [h for s in list(self.slots) if (h := self.holder_of(s, now, wall)) is not None]
        out.sort(key=lambda h: h.held_for, reverse=True)
        return out

    def measures(self) -> dict[str, int]:
        cfg = self.config
        return {
            "pool_min": cfg.min_size,
            "pool_max": cfg.max_size,
            "pool_size": self.size + self.connecting,
            "pool_available": len(self.idle),
            "requests_waiting": len(self.waiters),
        }

    def get_stats(self) -> dict[str, int]:
        now = time.monotonic()
        outs = [s for s in self.slots if s.out]
        held = [now - s.out_at for s in outs]
        rv = self.measures()
        rv.update(self.stats.as_dict())
        rv["holders_num"] = len(outs)
        rv["holders_max_held_ms"] = int(max(held, default=0.0) * 1000)
        rv["leaks_current"] = sum(1 for s in outs if s.leak_reported)
        rv["generation"] = self.gen
        return rv

    def timeout_error(self, timeout: float, now: float, waiter_since: float) -> PoolCheckoutTimeout:
        """The PoolTimeout that explains itself (sizes, waiters, holders, server state)."""
        cfg = self.config
        holders = self.holders()
        oldest = max((now - w.since for w in self.waiters), default=now - waiter_since)
        in_use = sum(1 for s in self.slots if s.out)
        waiting = len(self.waiters) + 1
        counts = (f"{in_use}/{cfg.max_size} in use, {len(self.idle)} idle, {waiting} waiting, "
                  f"oldest wait {oldest:.1f} s")
        kind = self.failure_kind if self.failures else None
        in_flight = now - self.last_attempt_at if self.connecting else 0.0
        no_answer = kind is None and in_flight >= NO_ANSWER_AFTER
        attempts = (f"{self.failures} connection attempts failed over "
                    f"{now - self.first_failure_at:.1f} s, last: {self.last_error}")
        if kind == "server_full":
            what = (f"pool {cfg.name!r} is exhausted ({counts}) and cannot grow: the server has "
                    f"no free connection slot ({attempts}); retrying about once a second")
        elif kind in ("rejected", "invalid"):
            what = (f"pool {cfg.name!r} cannot connect: the server rejects it ({counts}): "
                    f"{attempts}; fix the credentials or the DSN")
        elif kind is not None:
            what = f"pool {cfg.name!r} cannot reach the server ({counts}): {attempts}"
        elif no_answer:
            what = (f"pool {cfg.name!r} cannot reach the server ({counts}): a connection "
                    f"attempt has had no answer for {in_flight:.1f} s (the server is down or "
                    "unreachable, or something in front of it accepts connections and never "
                    "answers)")
        elif in_use >= cfg.max_size:
            what = f"pool {cfg.name!r} is exhausted ({counts})"
        else:
            what = f"pool {cfg.name!r} has no connection available ({counts})"
        unreachable = no_answer or kind in ("unreachable", "going_down")
        if holders:
            what += "; longest holders: " + ", ".join(h.describe() for h in holders[:3])
            if len(holders) > 3:
                what += f", ... ({len(holders) - 3} more)"
        msg = f"couldn't get a connection after {timeout:.2f} s: {what}"
        return PoolCheckoutTimeout(
            msg,
            pool_name=cfg.name,
            timeout=timeout,
            pool_size=self.size,
            pool_min=cfg.min_size,
            pool_max=cfg.max_size,
            in_use=in_use,
            idle=len(self.idle),
            waiting=waiting,
            oldest_wait=oldest,
            holders=holders,
            server_unreachable=unreachable,
            server_full=kind == "server_full",
            last_connect_error=self.last_error,
            connect_failure=kind,
        )



class PoolProperties:
    """Configuration read-outs and ``repr`` shared by the sync and asyncio pools (one place)."""

    _config: Config
    _core: Core
    _closed: bool

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def min_size(self) -> int:
        return self._config.min_size

    @property
    def max_size(self) -> int:
        return self._config.max_size

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def timeout(self) -> float:
        return self._config.timeout

    @property
    def max_waiting(self) -> int:
        return self._config.max_waiting

    @property
    def conninfo(self) -> Any:
        return self._config.conninfo

    @property
    def kwargs(self) -> Any:
        return self._config.kwargs

    @property
    def leak_threshold(self) -> float | None:
        return self._config.leak_threshold

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        core = self._core
        return (f"<{type(self).__module__}.{type(self).__qualname__} {self.name!r} ({state}) "
                f"size={core.size} idle={len(core.idle)} in_use={core.size - len(core.idle)}>")

class PoolCheckoutTimeout(PoolTimeout):
    """:class:`~pgwarden.errors.PoolTimeout` with the numbers that explain it.

    Attributes:
        pool_name: the pool's ``name``.
        timeout: seconds the caller waited.
        pool_size / pool_min / pool_max: open connections and the configured bounds.
        in_use: connections checked out; idle: connections in the pool; waiting: callers
            waiting including this one; oldest_wait: seconds the oldest of them has waited.
        holders: :class:`~pgwarden.pool.Holder` snapshots, longest held first.
        server_unreachable: connection attempts fail or get no answer: the server is down or
            cannot be reached (the message says why).
        server_full: the server has no free slot ("too many clients already", "remaining
            connection slots are reserved").
        last_connect_error: first line of the last connection error, or ``None``.
        connect_failure: what the failing connection attempts mean
            (:data:`pgwarden.diagnose.KINDS`: ``unreachable``, ``going_down``,
            ``server_full``, ``rejected``, ...), or ``None`` while connecting works.
    """

    def __init__(self, msg: str, *, pool_name: str, timeout: float, pool_size: int,
                 pool_min: int, pool_max: int, in_use: int, idle: int, waiting: int,
                 oldest_wait: float, holders: list[Holder], server_unreachable: bool,
                 server_full: bool, last_connect_error: str | None,
                 connect_failure: str | None = None) -> None:
        super().__init__(msg)
        self.pool_name = pool_name
        self.timeout = timeout
        self.pool_size = pool_size
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.in_use = in_use
        self.idle = idle
        self.waiting = waiting
        self.oldest_wait = oldest_wait
        self.holders = holders
        self.server_unreachable = server_unreachable
        self.server_full = server_full
        self.last_connect_error = last_connect_error
        self.connect_failure = connect_failure


# -- validation protocol (driven by the shells) ----------------------------------------

WAIT_R = 1
WAIT_W = 2


class ProbeFailed(Exception):
    """The connection did not answer a validation round trip."""


def probe(pgconn: Any) -> Generator[int, None, None]:
    """Send an empty query and read its answer; yields WAIT_R/WAIT_W when the socket must be
    waited on. Raises ProbeFailed (or psycopg.OperationalError) if the connection is dead."""
    if pgconn.status != CONN_OK:
        raise ProbeFailed("connection is closed")
    if pgconn.transaction_status != TS.IDLE:
        raise ProbeFailed("connection is not idle")
    pgconn.send_query(b"")
    while pgconn.flush():
        yield WAIT_W
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        yield WAIT_R
    ok = False
    while True:
        res = pgconn.get_result()
        if res is None:
            break
        if res.status == pq.ExecStatus.EMPTY_QUERY:
            ok = True
        else:
            err = res.error_message.decode(errors="replace").strip()
            raise ProbeFailed(err or f"unexpected result {res.status}")
    if not ok or pgconn.status != CONN_OK:
        raise ProbeFailed("no answer to the validation query")


def readable_now(fd: int) -> bool:
    """Whether the socket has data or EOF pending (the server sent something, e.g. a FATAL
    'terminating connection', while the connection sat idle). One poll syscall."""
    try:
        r, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(0))
    return bool(r)


def return_verdict(conn: Any, status: int) -> str | None:
    """Reset-on-return rule for a connection not idle: ``"rollback"`` when it is inside a
    transaction (rolled back with a warning naming the holder, as psycopg_pool does), else the
    reason to discard it (broken, or returned while a query runs, e.g. a cancelled task)."""
    if conn.closed:
        return "closed by its holder"
    if status == TS.UNKNOWN:
        return "broken (connection lost)"
    if status == TS.ACTIVE:
        return "returned while a query was running"
    return "rollback"



def foreign_connection(pool: Any, conn: Any) -> ValueError:
    """The error for a connection given back to a pool it does not come from (``putconn``),
    worded as psycopg_pool's. The shells test ownership inline (hot path) and raise this."""
    owner = getattr(conn, "_pool", None)
    where = (f"it comes from pool {owner.name!r}" if owner is not None
             else "it doesn't come from any pool")
    return ValueError(f"can't return connection to pool {pool.name!r}, {where}: {conn}")


def log_rollback(pool_name: str, slot: Slot, conn: Any) -> None:
    logger.warning(
        "pool %r: connection pid %d returned inside a transaction (%s) by %s at %s; "
        "rolling back", pool_name, slot.pid, tx_state(conn), holder_name(slot.holder),
        format_location(slot.stack))



def end_of_block(status: int, closed: bool, failed: bool) -> str | None:
    """What ``with pool.connection() as conn:`` does to the transaction when the block ends:
    ``"commit"`` (no exception, inside a transaction), ``"rollback"`` (an exception, or a failed
    transaction) or ``None`` (nothing open). psycopg_pool's documented behaviour."""
    if closed or status == TS.IDLE:
        return None
    if not failed and status == TS.INTRANS:
        return "commit"
    if status in (TS.INTRANS, TS.INERROR):
        return "rollback"
    return None


def report_leaks(pool_name: str, core: Core, slots: list[Slot], now: float) -> None:
    """Log the leak warning (with the holder's stack) for slots :meth:`Core.leak_scan` found."""
    wall = time.time()
    for slot in slots:
        h = core.holder_of(slot, now, wall)
        if h is not None:
            log_leak(pool_name, h)

def log_leak(pool_name: str, h: Holder) -> None:
    logger.warning(
        "pool %r: connection leak? pid %d checked out %.1f s ago by %s at %s (%s) and not "
        "returned. Checkout stack (most recent call last):\n%s",
        pool_name, h.pid, h.held_for, h.holder, h.location, h.transaction_state,
        h.format_stack())


def log_unleaked(pool_name: str, slot: Slot, now: float) -> None:
    logger.info("pool %r: previously reported leak returned (unleaked): pid %d held %.1f s "
                "by %s at %s", pool_name, slot.pid, now - slot.out_at, holder_name(slot.holder),
                format_location(slot.stack))


def log_reclaimed(pool_name: str, slot: Slot) -> None:
    logger.warning(
        "pool %r: connection pid %d was garbage-collected without being returned "
        "(checked out by %s at %s); reclaimed its slot. Checkout stack (most recent "
        "call last):\n%s", pool_name, slot.pid, holder_name(slot.holder),
        format_location(slot.stack), "".join(summarize(slot.stack).format()))


def maintenance_tick(leak_threshold: float | None) -> float:
    """Seconds between maintenance passes: a quarter of the leak threshold, 50 ms to 1 s."""
    return 1.0 if leak_threshold is None else max(0.05, min(1.0, leak_threshold / 4))


def call_reconnect_failed(cb: Callable[[Any], Any] | None, pool: Any) -> None:
    logger.warning("pool %r: could not connect for reconnect_timeout; giving up until a "
                   "caller asks for a connection", pool.name)
    if cb is not None:
        try:
            cb(pool)
        except Exception:
            logger.exception("pool %r: reconnect_failed callback raised", pool.name)
