"""The guard's policy: a pure function from one :class:`~pgwarden.sources.postgres.Snapshot`
to actions.

Nothing here does I/O. :func:`decide` takes a snapshot, a :class:`Policy` and how many actions
were taken in the last minute, and returns a :class:`Plan`: the :class:`Action` records to carry
out (cancel or terminate one backend, with the rule that chose it) and the :class:`Skip` records
for sessions a rule matched but that must not or may not be touched (and why).

The safety invariants live in one place, :func:`protected`, applied to every candidate of every
rule and of the emergency mode before it can become an action:

- only ``client backend`` sessions are ever candidates (never walsenders, autovacuum, parallel or
  background workers);
- never pgwarden's own sessions (its backend pid, and any ``pgwarden-*`` application: other guard
  instances, ``pgwarden doctor``, ...); this is not configurable;
- never superuser sessions unless ``allow_superuser`` is set;
- never sessions of replication roles unless ``protect_replication_roles`` is off;
- never the protected applications, users, databases and client networks (glob patterns and
  CIDRs; the defaults protect ``pg_dump*``, ``pg_restore*``, ``pg_basebackup``, ``psql``).

Durations are seconds (float); usage is a fraction of the usable slots (see
:attr:`pgwarden.sources.postgres.Snapshot.usage`).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..sources.postgres.records import Session, Snapshot

__all__ = [
    "ACTIVE",
    "DEFAULT_PROTECTED_APPLICATIONS",
    "DEFAULT_RULES",
    "EMERGENCY",
    "IDLE",
    "IDLE_IN_TRANSACTION",
    "RULE_KINDS",
    "Action",
    "Emergency",
    "Limits",
    "Plan",
    "Policy",
    "Protection",
    "Rule",
    "Scope",
    "Skip",
    "decide",
    "protected",
]

RuleKind = Literal["idle_in_transaction", "idle", "active"]
ActionKind = Literal["terminate", "cancel"]

#: Rule kinds: which session state a rule looks at, and what it does.
IDLE_IN_TRANSACTION: RuleKind = "idle_in_transaction"
IDLE: RuleKind = "idle"
ACTIVE: RuleKind = "active"
RULE_KINDS: tuple[RuleKind, ...] = (IDLE_IN_TRANSACTION, IDLE, ACTIVE)
#: The ``rule`` name on actions chosen by the emergency mode.
EMERGENCY = "emergency"

#: Applications that are always protected, whatever the configuration says.
ALWAYS_PROTECTED_APPLICATIONS = ("pgwarden-*",)
#: Protected by default: dumps, restores and base backups must finish; an interactive ``psql``
#: is a human at work (idle between their queries).
DEFAULT_PROTECTED_APPLICATIONS = ("pgwarden-*", "pg_dump*", "pg_restore*", "pg_basebackup", "psql")

_STATES_OF_KIND: dict[str, tuple[str, ...]] = {
    IDLE_IN_TRANSACTION: ("idle in transaction", "idle in transaction (aborted)"),
    IDLE: ("idle",),
    ACTIVE: ("active",),
}


@functools.lru_cache(maxsize=256)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A CIDR (``10.0.0.0/8``, ``::1/128``, a bare address) or ``local`` (Unix socket: None).

    Raises:
        ValueError: not a network.
    """
    if text == "local":
        return None
    return ipaddress.ip_network(text, strict=False)


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _match_glob(patterns: tuple[str, ...], value: str | None) -> str | None:
    """The first pattern (case-sensitive glob) that ``value`` matches, else None."""
    if value is None:
        return None
    for pattern in patterns:
        if fnmatch.fnmatchcase(value, pattern):
            return pattern
    return None


def _match_network(networks: tuple[str, ...], client_addr: str | None) -> str | None:
    """The first network containing ``client_addr`` (``local`` matches Unix-socket sessions)."""
    if not networks:
        return None
    if client_addr is None:
        return "local" if "local" in networks else None
    addr = _address(client_addr)
    if addr is None:
        return None
    for text in networks:
        net = _network(text)
        if net is not None and addr.version == net.version and addr in net:
            return text
    return None


def _names(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"{what} must be a list of patterns, not a string")
    out = tuple(values)
    for v in out:
        if not isinstance(v, str):
            raise ValueError(f"{what} must be strings, got {v!r}")
    return out


def _networks(values: Iterable[str], what: str) -> tuple[str, ...]:
    out = _names(values, what)
    for v in out:
        try:
            _network(v)
        except ValueError:
            raise ValueError(
                f"{what}: {v!r} is not a network (expected a CIDR like '10.0.0.0/8', an "
                "address, or 'local' for Unix-socket sessions)"
            ) from None
    return out


@dataclass(frozen=True, slots=True)
class Scope:
    """Which sessions a rule applies to. Empty means "all"; a non-empty dimension must match
    (any of its entries), and all non-empty dimensions must match together.

    Attributes:
        applications: glob patterns (``fnmatch``, case-sensitive) on ``application_name``;
            ``""`` matches sessions without one.
        users: glob patterns on the role name.
        databases: glob patterns on the database name.
        networks: CIDRs (``10.0.0.0/8``), bare addresses, or ``local`` (Unix socket).

    Raises:
        ValueError: a network does not parse, or a value is not a list of strings.
    """

    applications: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "applications", _names(self.applications, "applications"))
        object.__setattr__(self, "users", _names(self.users, "users"))
        object.__setattr__(self, "databases", _names(self.databases, "databases"))
        object.__setattr__(self, "networks", _networks(self.networks, "networks"))

    def matches(self, s: Session) -> bool:
        """True if ``s`` is in scope (every non-empty dimension matches)."""
        if self.applications and _match_glob(self.applications, s.application) is None:
            return False
        if self.users and _match_glob(self.users, s.user) is None:
            return False
        if self.databases and _match_glob(self.databases, s.database) is None:
            return False
        return not (self.networks and _match_network(self.networks, s.client_addr) is None)

    def describe(self) -> str:
        parts = []
        for name in ("applications", "users", "databases", "networks"):
            values = getattr(self, name)
            if values:
                parts.append(f"{name}={','.join(values)}")
        return " ".join(parts) or "all sessions"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the policy.

    Attributes:
        name: how audit records and metrics name the rule (``idle_in_transaction``, ...).
        kind: ``idle_in_transaction`` (terminate sessions idle in a transaction, aborted or
            not, for longer than ``after``), ``idle`` (terminate sessions idle for longer than
            ``after``) or ``active`` (cancel, not terminate, queries running longer than
            ``after``).
        after: seconds (float, >= 0) the session has been in that state (``state_change``; for
            ``active``: since ``query_start``).
        scope: which sessions the rule applies to (default all).
        only_above: ``idle`` rules only: act only while usage is above this fraction of usable
            slots, oldest idle first, and stop once it would be at or below it. ``None``: always.

    Raises:
        ValueError: an unknown kind, a negative ``after``, ``only_above`` outside (0, 1] or on
            a rule that is not ``idle``.
    """

    name: str
    kind: RuleKind
    after: float
    scope: Scope = field(default_factory=Scope)
    only_above: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"rule kind must be one of {', '.join(RULE_KINDS)}, not {self.kind!r}")
        if not self.name:
            raise ValueError("rule name must not be empty")
        if self.name == EMERGENCY:
            raise ValueError(f"rule name {EMERGENCY!r} is reserved for the emergency mode")
        if not isinstance(self.after, (int, float)) or self.after < 0:
            raise ValueError(f"after must be seconds >= 0, not {self.after!r}")
        object.__setattr__(self, "after", float(self.after))
        if self.only_above is not None:
            if self.kind != IDLE:
                raise ValueError("only_above applies to idle rules only")
            if not 0 < self.only_above <= 1:
                raise ValueError(f"only_above must be a usage in (0, 1], not {self.only_above!r}")
            object.__setattr__(self, "only_above", float(self.only_above))

    @property
    def action(self) -> ActionKind:
        """``cancel`` for ``active`` rules, ``terminate`` otherwise."""
        return "cancel" if self.kind == ACTIVE else "terminate"

    def age(self, s: Session) -> float | None:
        """The age this rule compares with ``after`` (seconds), None if not applicable."""
        if s.state not in _STATES_OF_KIND[self.kind]:
            return None
        if self.kind == ACTIVE:
            return s.query_age if s.query_age is not None else s.state_age
        return s.state_age

    def matches(self, s: Session) -> bool:
        """``s`` is in the rule's state, older than ``after``, in scope (protection aside)."""
        age = self.age(s)
        return age is not None and age > self.after and self.scope.matches(s)


#: Used when neither a config file nor options name any rule: sessions idle in a transaction
#: for 10 minutes hold locks and snapshots (they block vacuum) and no pool recovers them.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(name=IDLE_IN_TRANSACTION, kind=IDLE_IN_TRANSACTION, after=600.0),
)


@dataclass(frozen=True, slots=True)
class Emergency:
    """Emergency mode: when usage reaches ``at``, terminate idle sessions, oldest first, until
    usage would be back at ``target``, never sessions idle for less than ``min_idle``.

    Attributes:
        at: usage (fraction of usable slots, (0, 1]) that triggers it.
        target: usage to bring it back to; ``0 <= target < at``.
        min_idle: seconds (float); sessions idle for less are never chosen (a pool's
            connection between two requests is idle for milliseconds).
        include_idle_in_transaction: also choose sessions idle in a transaction (their work is
            rolled back); off by default.
        scope: which sessions it may choose (default all).

    Raises:
        ValueError: values out of range.
    """

    at: float
    target: float
    min_idle: float = 60.0
    include_idle_in_transaction: bool = False
    scope: Scope = field(default_factory=Scope)

    def __post_init__(self) -> None:
        if not 0 < self.at <= 1:
            raise ValueError(f"emergency at must be a usage in (0, 1], not {self.at!r}")
        if not 0 <= self.target < self.at:
            raise ValueError(
                f"emergency target must be >= 0 and below at={self.at}, not {self.target!r}"
            )
        if self.min_idle < 0:
            raise ValueError(f"emergency min_idle must be seconds >= 0, not {self.min_idle!r}")
        object.__setattr__(self, "at", float(self.at))
        object.__setattr__(self, "target", float(self.target))
        object.__setattr__(self, "min_idle", float(self.min_idle))

    def states(self) -> tuple[str, ...]:
        if self.include_idle_in_transaction:
            return _STATES_OF_KIND[IDLE] + _STATES_OF_KIND[IDLE_IN_TRANSACTION]
        return _STATES_OF_KIND[IDLE]


@dataclass(frozen=True, slots=True)
class Protection:
    """Sessions no rule may touch (on top of the fixed invariants, see :func:`protected`).

    Attributes:
        applications: glob patterns on ``application_name``; ``pgwarden-*`` is protected
            even if left out. Default :data:`DEFAULT_PROTECTED_APPLICATIONS`.
        users, databases: glob patterns.
        networks: CIDRs, addresses, or ``local`` (Unix socket).
        allow_superuser: let rules touch superuser sessions (default off; a role with only
            ``pg_signal_backend`` cannot signal them anyway).
        protect_replication_roles: protect sessions of roles with ``REPLICATION`` (default on).
    """

    applications: tuple[str, ...] = DEFAULT_PROTECTED_APPLICATIONS
    users: tuple[str, ...] = ()
    databases: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    allow_superuser: bool = False
    protect_replication_roles: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "applications", _names(self.applications, "applications"))
        object.__setattr__(self, "users", _names(self.users, "users"))
        object.__setattr__(self, "databases", _names(self.databases, "databases"))
        object.__setattr__(self, "networks", _networks(self.networks, "networks"))


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one guard may do.

    Attributes:
        max_per_pass: at most this many actions (terminate or cancel) in one pass (>= 0).
        max_per_minute: at most this many actions in any 60 seconds (>= 0).
    """

    max_per_pass: int = 10
    max_per_minute: int = 30

    def __post_init__(self) -> None:
        for name in ("max_per_pass", "max_per_minute"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, not {value!r}")


@dataclass(frozen=True, slots=True)
class Policy:
    """A guard's whole configuration; :func:`decide` uses the rules, emergency, protection and
    limits, the guard's loop the rest.

    Attributes:
        rules: evaluated in order; a session is chosen by the first rule that matches it.
            Default :data:`DEFAULT_RULES`.
        emergency: the emergency mode, or ``None`` (default: off).
        protection: see :class:`Protection`.
        limits: see :class:`Limits`.
        interval: seconds between passes of the daemon (default 10).
        enforce: act (default False: dry run, report only).
        audit_log: where audit records go: file paths, ``-`` for stdout (default none).

    Raises:
        ValueError: an invalid value, or two rules with one name.
    """

    rules: tuple[Rule, ...] = DEFAULT_RULES
    emergency: Emergency | None = None
    protection: Protection = field(default_factory=Protection)
    limits: Limits = field(default_factory=Limits)
    interval: float = 10.0
    enforce: bool = False
    audit_log: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "audit_log", _names(self.audit_log, "audit_log"))
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"two rules are named {sorted(dup)[0]!r}")
        if not self.interval > 0:
            raise ValueError(f"interval must be seconds > 0, not {self.interval!r}")
        object.__setattr__(self, "interval", float(self.interval))

    @classmethod
    def from_options(cls, base: Policy | None = None, **options: Any) -> Policy:
        """Flat keyword options, as the CLI's (see :func:`pgwarden.guard.config.make_policy`),
        e.g. ``Policy.from_options(idle_after=300, emergency_at=0.8, emergency_target=0.7)``."""
        from .config import make_policy

        return make_policy(base, **options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Policy:
        """The TOML file format as a dict (see :mod:`pgwarden.guard.config`)."""
        from .config import policy_from_dict

        return policy_from_dict(data, source=source)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Policy:
        """Read a TOML file (see :func:`pgwarden.guard.config.load_policy`)."""
        from .config import load_policy

        return load_policy(path)


@dataclass(frozen=True, slots=True)
class Action:
    """Cancel or terminate one backend, with the rule that chose it.

    The session is the one seen in the snapshot; acting matches its pid together with
    ``backend_start``, ``state`` and ``state_change``, so a reused pid or a session that has
    moved on is never hit.

    Attributes:
        kind: ``terminate`` (``pg_terminate_backend``) or ``cancel`` (``pg_cancel_backend``).
        rule: the rule's name, or ``emergency``.
        session: the session as the snapshot saw it.
        reason: why, for humans (``idle in transaction 612s > 600s``).
    """

    kind: ActionKind
    rule: str
    session: Session
    reason: str

    @property
    def pid(self) -> int:
        return self.session.pid

    @property
    def backend_start(self) -> dt.datetime | None:
        return self.session.backend_start

    @property
    def state(self) -> str | None:
        return self.session.state

    @property
    def state_change(self) -> dt.datetime | None:
        return self.session.state_change


@dataclass(frozen=True, slots=True)
class Skip:
    """A session a rule (or the emergency mode) matched that is left alone, and why.

    Attributes:
        rule: the rule's name, or ``emergency``.
        session: the session as the snapshot saw it.
        code: ``protected``, ``limit_per_pass``, ``limit_per_minute`` (from :func:`decide`);
            the guard adds ``standby``, ``gone``, ``pid_reused``, ``state_changed``.
        reason: for humans (``protected: superuser session (user 'postgres')``).
        kind: the action it would have been.
    """

    rule: str
    session: Session
    code: str
    reason: str
    kind: ActionKind = "terminate"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pass decides.

    Attributes:
        taken_at: the snapshot's instant.
        used_slots, usable_slots, usage: from the snapshot.
        actions: to carry out, in order.
        skipped: matched but left alone.
        candidates: sessions any rule or the emergency mode matched (acted on or skipped).
        emergency: the emergency mode triggered (usage >= ``at``).
        projected_usage: usage once every action that terminates has hit.
    """

    taken_at: dt.datetime
    used_slots: int
    usable_slots: int
    usage: float
    actions: tuple[Action, ...]
    skipped: tuple[Skip, ...]
    candidates: int
    emergency: bool
    projected_usage: float


def protected(
    s: Session, snapshot: Snapshot, protection: Protection, own_pids: Iterable[int] = ()
) -> str | None:
    """Why ``s`` must never be touched, or ``None`` if a rule may act on it.

    This is the one place the safety invariants live; :func:`decide` applies it to every
    candidate of every rule and of the emergency mode.
    """
    if s.pid == snapshot.server.self_pid or s.pid in own_pids:
        return "pgwarden's own session"
    if not s.visible:
        return "session hidden from this role (grant pg_monitor)"
    if s.backend_type != "client backend":
        return f"{s.backend_type} is not a client backend"
    if _match_glob(ALWAYS_PROTECTED_APPLICATIONS, s.application):
        return f"pgwarden session (application {s.application!r})"
    if s.is_superuser and not protection.allow_superuser:
        return f"superuser session (user {s.user!r}; allow_superuser is off)"
    if s.is_replication_role and protection.protect_replication_roles:
        return f"replication role {s.user!r}"
    for what, patterns, value in (("application", protection.applications, s.application),
                                  ("user", protection.users, s.user),
                                  ("database", protection.databases, s.database)):
        hit = _match_glob(patterns, value)
        if hit is not None:
            return f"protected {what} {value!r} (pattern {hit!r})"
    hit = _match_network(protection.networks, s.client_addr)
    if hit is not None:
        return f"protected network {hit} (client {s.client_addr or 'local'})"
    return None


_STATE_WORDS = {IDLE_IN_TRANSACTION: "idle in transaction", IDLE: "idle", ACTIVE: "active"}


def _secs(age: float) -> str:
    return f"{age:.1f}s" if age < 10 else f"{age:.0f}s"


def _usage(used: int, usable: int) -> float:
    return used / usable if usable else 1.0


def decide(
    snapshot: Snapshot,
    policy: Policy,
    *,
    recent_actions: int = 0,
    own_pids: Iterable[int] = (),
) -> Plan:
    """Choose what to do about ``snapshot`` under ``policy``. Pure: no I/O, no clock.

    Order: each rule in turn (its matches oldest first), then the emergency mode (idle sessions
    oldest first until the projected usage is at its target); a session is chosen once.
    Protected sessions become :class:`Skip` records; so do actions beyond the limits
    (``max_per_pass``, and ``max_per_minute`` minus ``recent_actions``), last chosen first.

    Args:
        snapshot: one look at the server.
        policy: the policy.
        recent_actions: actions this guard took in the last 60 seconds.
        own_pids: further backend pids of pgwarden's own (besides the snapshot's own session).

    Returns:
        A :class:`Plan`.

    Raises:
        ValueError: ``snapshot`` is a summary (``postgres.take_summary``): the guard chooses
            among every session, so it needs a complete one.
    """
    if not snapshot.complete:
        raise ValueError("the guard decides on a complete snapshot (postgres.take), "
                         "not a summary")
    own = frozenset(own_pids)
    # the guard keeps its session (and so a slot) between passes: it counts, unlike the
    # one-shot commands' sessions that Snapshot.used_slots leaves out
    used = snapshot.used_slots + 1
    usable = snapshot.usable_slots
    usage = _usage(used, usable)
    chosen: list[Action] = []
    chosen_pids: set[int] = set()
    skipped: list[Skip] = []
    skipped_pids: set[int] = set()
    reasons: dict[int, str | None] = {}
    terminating = 0

    def guard(s: Session, rule: str, kind: ActionKind) -> bool:
        """True if ``s`` may be acted on; records a Skip (once per session) otherwise."""
        if s.pid not in reasons:
            reasons[s.pid] = protected(s, snapshot, policy.protection, own)
        reason = reasons[s.pid]
        if reason is None:
            return True
        if s.pid not in skipped_pids:
            skipped_pids.add(s.pid)
            skipped.append(Skip(rule, s, "protected", f"protected: {reason}", kind))
        return False

    for rule in policy.rules:
        aged: list[tuple[float, Session]] = []
        for s in snapshot.sessions:
            if s.pid in chosen_pids:
                continue
            age = rule.age(s)
            if age is not None and age > rule.after and rule.scope.matches(s):
                aged.append((age, s))
        aged.sort(key=lambda x: (-x[0], x[1].pid))
        word = _STATE_WORDS[rule.kind]
        for age, s in aged:
            now_usage = _usage(used - terminating, usable)
            if rule.only_above is not None and now_usage <= rule.only_above:
                break
            if not guard(s, rule.name, rule.action):
                continue
            reason = f"{word} {_secs(age)} > {rule.after:g}s"
            if rule.only_above is not None:
                reason += f" and usage {now_usage:.2f} > {rule.only_above:g}"
            chosen.append(Action(rule.action, rule.name, s, reason))
            chosen_pids.add(s.pid)
            if rule.action == "terminate":
                terminating += 1

    emergency = policy.emergency is not None and usage >= policy.emergency.at
    if policy.emergency is not None and emergency:
        em = policy.emergency
        states = em.states()
        idle: list[tuple[float, Session]] = []
        for s in snapshot.sessions:
            if s.pid in chosen_pids or s.state not in states or s.state_age is None:
                continue
            if s.state_age >= em.min_idle and em.scope.matches(s):
                idle.append((s.state_age, s))
        idle.sort(key=lambda x: (-x[0], x[1].pid))
        for age, s in idle:
            if _usage(used - terminating, usable) <= em.target:
                break
            if not guard(s, EMERGENCY, "terminate"):
                continue
            chosen.append(
                Action(
                    "terminate",
                    EMERGENCY,
                    s,
                    f"usage {usage:.2f} >= {em.at:g}: {s.state} {_secs(age)}, oldest first "
                    f"to reach {em.target:g}",
                )
            )
            chosen_pids.add(s.pid)
            terminating += 1

    per_minute_left = max(0, policy.limits.max_per_minute - recent_actions)
    allowed = min(policy.limits.max_per_pass, per_minute_left)
    actions = chosen[:allowed]
    for a in chosen[allowed:]:
        if allowed == per_minute_left and per_minute_left < policy.limits.max_per_pass:
            code = "limit_per_minute"
            why = f"limit: max_per_minute={policy.limits.max_per_minute} reached"
        else:
            code = "limit_per_pass"
            why = f"limit: max_per_pass={policy.limits.max_per_pass} reached"
        skipped.append(Skip(a.rule, a.session, code, f"{why} ({a.reason})", a.kind))
    terminations = sum(1 for a in actions if a.kind == "terminate")
    return Plan(
        taken_at=snapshot.taken_at,
        used_slots=used,
        usable_slots=usable,
        usage=usage,
        actions=tuple(actions),
        skipped=tuple(skipped),
        candidates=len(chosen) + len(skipped_pids),
        emergency=emergency,
        projected_usage=_usage(used - terminations, usable),
    )
