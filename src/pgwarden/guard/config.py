"""The guard's configuration: a TOML file, a dict, or keyword options, to a :class:`Policy`.

File format (every key optional; see docs/guard.md for the reasons behind the defaults)::

    enforce = false                 # dry run unless true
    interval = "10s"                # between passes of the daemon
    audit_log = "/var/log/pgwarden/guard.jsonl"   # or a list; "-" is stdout

    [limits]
    max_per_pass = 10
    max_per_minute = 30

    [protect]                       # on top of the fixed invariants (client backends only,
    applications = ["pgwarden-*", "pg_dump*", "pg_restore*", "pg_basebackup", "psql"]
    users = []                      # never pgwarden's own sessions, never pgwarden-*)
    databases = []
    networks = []                   # CIDRs, addresses, or "local" (Unix socket)
    allow_superuser = false
    replication_roles = true        # protect roles with REPLICATION

    [emergency]                     # absent: off
    at = 0.8
    target = 0.7
    min_idle = "1min"
    include_idle_in_transaction = false
    applications = []               # scope, as in rules

    [rules.idle_in_transaction]     # the table name is the rule's name
    after = "10min"                 # kind defaults to the name when it is a kind

    [rules.idle_web]
    kind = "idle"                   # idle_in_transaction | idle | active
    after = "30min"
    only_above = 0.5                # idle only: act only while usage is above
    applications = ["web-*"]
    users = []
    databases = []
    networks = ["10.0.0.0/8"]

Durations are seconds (a number) or a string with a unit: ``"500ms"``, ``"30s"``, ``"5min"``,
``"2h"``, ``"1d"``. Usages are fractions (``0.8``) or percentages (``"80%"``). Unknown keys are
errors. Every error is a :class:`~pgwarden.errors.ConfigFileError` naming the file, the dotted
key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..configfile import TableReader, kind_of, load_toml
from ..errors import ConfigError
from .policy import (
    ACTIVE,
    DEFAULT_RULES,
    IDLE,
    IDLE_IN_TRANSACTION,
    RULE_KINDS,
    Emergency,
    Limits,
    Policy,
    Protection,
    Rule,
    Scope,
)

__all__ = ["load_policy", "make_policy", "parse_duration", "parse_usage", "policy_from_dict"]

T = TypeVar("T")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|secs|m|min|mins|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "secs": 1.0, "m": 60.0, "min": 60.0, "mins": 60.0,
          "h": 3600.0, "d": 86400.0, None: 1.0}
_DURATION_HELP = "seconds (a number >= 0) or a string like '500ms', '30s', '5min', '2h'"
_USAGE_HELP = "a usage between 0 and 1 (like 0.8) or a percentage (like '80%')"

_TOP_KEYS = ("enforce", "interval", "audit_log", "limits", "protect", "emergency", "rules")
_SCOPE_KEYS = ("applications", "users", "databases", "networks")
_RULE_KEYS = ("kind", "after", "only_above", *_SCOPE_KEYS)
_EMERGENCY_KEYS = ("at", "target", "min_idle", "include_idle_in_transaction", *_SCOPE_KEYS)
_PROTECT_KEYS = (*_SCOPE_KEYS, "allow_superuser", "replication_roles")
_LIMIT_KEYS = ("max_per_pass", "max_per_minute")


def parse_duration(value: object) -> float:
    """Seconds (float) from a number or a string with a unit (``"5min"``).

    Raises:
        ValueError: negative, not a number, unknown unit.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HELP}, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or value != value:
            raise ValueError(f"expected {_DURATION_HELP}, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected {_DURATION_HELP}, got {value!r}")


def parse_usage(value: object) -> float:
    """A usage fraction from ``0.8`` or ``"80%"``.

    Raises:
        ValueError: not within 0..1.
    """
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1]) / 100.0
        except ValueError:
            number = None
    if number is None or not 0 <= number <= 1:
        raise ValueError(f"expected {_USAGE_HELP}, got {value!r}")
    return number


class _Reader(TableReader):
    """Reads one source, raising ConfigFileError with file and key on every problem."""


    def get(self, table: Mapping[str, Any], key: str, name: str,
            conv: Callable[[object], T]) -> T:
        try:
            return conv(table[name])
        except (ValueError, TypeError) as exc:
            raise self.fail(key, str(exc)) from None

    def boolean(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    def strings(self, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(value)

    def integer(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected an integer >= 0, got {value!r}")
        return value

    def scope(self, table: Mapping[str, Any], key: str) -> Scope:
        kwargs: dict[str, Any] = {}
        for name in _SCOPE_KEYS:
            if name in table:
                kwargs[name] = self.get(table, f"{key}.{name}", name, self.strings)
        try:
            return Scope(**kwargs)
        except ValueError as exc:
            bad = next((n for n in _SCOPE_KEYS if n in str(exc)), None)
            raise self.fail(f"{key}.{bad}" if bad else key, str(exc)) from None

    def rule(self, name: str, value: object) -> Rule:
        key = f"rules.{name}"
        t = self.table(value, key, _RULE_KEYS)
        if "kind" in t:
            kind = t["kind"]
            if kind not in RULE_KINDS:
                raise self.fail(f"{key}.kind", f"expected one of {', '.join(RULE_KINDS)}, "
                                f"got {kind!r}")
        elif name in RULE_KINDS:
            kind = name
        else:
            raise self.fail(f"{key}.kind", "missing; expected one of "
                            f"{', '.join(RULE_KINDS)} (or name the rule after its kind)")
        if "after" not in t:
            raise self.fail(f"{key}.after", f"missing; expected {_DURATION_HELP}")
        after = self.get(t, f"{key}.after", "after", parse_duration)
        only_above = None
        if "only_above" in t:
            if kind != IDLE:
                raise self.fail(f"{key}.only_above", "allowed on rules of kind 'idle' only")
            only_above = self.get(t, f"{key}.only_above", "only_above", parse_usage)
            if only_above == 0:
                raise self.fail(f"{key}.only_above", f"expected {_USAGE_HELP} above 0")
        scope = self.scope(t, key)
        try:
            return Rule(name=name, kind=kind, after=after, scope=scope, only_above=only_above)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def emergency(self, value: object) -> Emergency:
        t = self.table(value, "emergency", _EMERGENCY_KEYS)
        for required in ("at", "target"):
            if required not in t:
                raise self.fail(f"emergency.{required}", f"missing; expected {_USAGE_HELP}")
        at = self.get(t, "emergency.at", "at", parse_usage)
        target = self.get(t, "emergency.target", "target", parse_usage)
        if at == 0:
            raise self.fail("emergency.at", f"expected {_USAGE_HELP} above 0")
        if target >= at:
            raise self.fail("emergency.target", f"must be below emergency.at ({at:g}), "
                            f"got {target:g}")
        kwargs: dict[str, Any] = {"at": at, "target": target}
        if "min_idle" in t:
            kwargs["min_idle"] = self.get(t, "emergency.min_idle", "min_idle", parse_duration)
        if "include_idle_in_transaction" in t:
            kwargs["include_idle_in_transaction"] = self.get(
                t, "emergency.include_idle_in_transaction", "include_idle_in_transaction",
                self.boolean)
        kwargs["scope"] = self.scope(t, "emergency")
        try:
            return Emergency(**kwargs)
        except ValueError as exc:
            raise self.fail("emergency", str(exc)) from None

    def protection(self, value: object) -> Protection:
        t = self.table(value, "protect", _PROTECT_KEYS)
        kwargs: dict[str, Any] = {}
        for name in _SCOPE_KEYS:
            if name in t:
                kwargs[name] = self.get(t, f"protect.{name}", name, self.strings)
        if "allow_superuser" in t:
            kwargs["allow_superuser"] = self.get(t, "protect.allow_superuser",
                                                 "allow_superuser", self.boolean)
        if "replication_roles" in t:
            kwargs["protect_replication_roles"] = self.get(
                t, "protect.replication_roles", "replication_roles", self.boolean)
        try:
            return Protection(**kwargs)
        except ValueError as exc:
            bad = next((n for n in _SCOPE_KEYS if n in str(exc)), None)
            raise self.fail(f"protect.{bad}" if bad else "protect", str(exc)) from None

    def limits(self, value: object) -> Limits:
        t = self.table(value, "limits", _LIMIT_KEYS)
        kwargs = {name: self.get(t, f"limits.{name}", name, self.integer)
                  for name in _LIMIT_KEYS if name in t}
        return Limits(**kwargs)

    def policy(self, data: object) -> Policy:
        t = self.table(data, "", _TOP_KEYS)
        kwargs: dict[str, Any] = {}
        if "enforce" in t:
            kwargs["enforce"] = self.get(t, "enforce", "enforce", self.boolean)
        if "interval" in t:
            interval = self.get(t, "interval", "interval", parse_duration)
            if interval <= 0:
                raise self.fail("interval", f"expected {_DURATION_HELP} above 0")
            kwargs["interval"] = interval
        if "audit_log" in t:
            kwargs["audit_log"] = self.get(t, "audit_log", "audit_log", self.strings)
        if "limits" in t:
            kwargs["limits"] = self.limits(t["limits"])
        if "protect" in t:
            kwargs["protection"] = self.protection(t["protect"])
        if "emergency" in t:
            kwargs["emergency"] = self.emergency(t["emergency"])
        if "rules" in t:
            rules = t["rules"]
            if not isinstance(rules, Mapping):
                raise self.fail("rules", "expected tables like [rules.idle], got "
                                f"{kind_of(rules)}")
            kwargs["rules"] = tuple(self.rule(str(n), v) for n, v in rules.items())
        try:
            return Policy(**kwargs)
        except ValueError as exc:
            raise self.fail(None, str(exc)) from None




def policy_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Policy:
    """A :class:`Policy` from the parsed file format (a dict like ``tomllib.load`` returns).

    Raises:
        ConfigFileError: a bad key or value; ``path`` is ``source``.
    """
    return _Reader(source).policy(data)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a TOML file (format in this module's docstring) into a :class:`Policy`.

    Raises:
        ConfigFileError: unreadable, not TOML, or a bad key or value (names file and key).
    """
    path = str(path)
    return policy_from_dict(load_toml(path), source=path)


def _replace_rule(rules: tuple[Rule, ...], rule: Rule) -> tuple[Rule, ...]:
    if any(r.name == rule.name for r in rules):
        return tuple(rule if r.name == rule.name else r for r in rules)
    return (*rules, rule)


def make_policy(base: Policy | None = None, **options: Any) -> Policy:
    """A :class:`Policy` from flat keyword options (the CLI's), on top of ``base``.

    Options (each ``None`` or absent leaves ``base``'s value):

    - ``idle_in_transaction_after``, ``idle_after``, ``cancel_active_after``: seconds; set the
      rule named ``idle_in_transaction`` / ``idle`` / ``active`` (replacing a rule of that name,
      keeping its scope) or add it;
    - ``idle_only_above``: usage, for the ``idle`` rule;
    - ``rule_applications``: glob patterns scoping the rules set by the options above;
    - ``emergency_at``, ``emergency_target`` (usage), ``emergency_min_idle`` (seconds);
    - ``max_per_pass``, ``max_per_minute``: integers;
    - ``allow_superuser``: bool;
    - ``protect_applications``, ``protect_users``, ``protect_databases``, ``protect_networks``:
      added to the protected ones;
    - ``interval`` (seconds), ``enforce`` (bool), ``audit_log`` (paths, replace).

    Raises:
        ConfigError: an unknown option or an invalid value (names the option).
    """
    policy = base if base is not None else Policy()
    known = {
        "idle_in_transaction_after", "idle_after", "idle_only_above", "cancel_active_after",
        "rule_applications", "emergency_at", "emergency_target", "emergency_min_idle",
        "max_per_pass", "max_per_minute", "allow_superuser", "protect_applications",
        "protect_users", "protect_databases", "protect_networks", "interval", "enforce",
        "audit_log",
    }
    unknown = set(options) - known
    if unknown:
        raise ConfigError(f"unknown guard option {sorted(unknown)[0]!r}")
    o = {k: v for k, v in options.items() if v is not None and v != ()}
    try:
        rules = policy.rules
        if rules is DEFAULT_RULES and any(k in o for k in (
                "idle_in_transaction_after", "idle_after", "cancel_active_after")):
            rules = ()
        scope_apps = tuple(o.get("rule_applications", ()))
        for opt, name in (("idle_in_transaction_after", IDLE_IN_TRANSACTION),
                          ("idle_after", IDLE), ("cancel_active_after", ACTIVE)):
            if opt in o:
                old = next((r for r in policy.rules if r.name == name), None)
                scope = old.scope if old is not None else Scope()
                if scope_apps:
                    scope = dataclasses.replace(scope, applications=scope_apps)
                only_above = old.only_above if old is not None and name == IDLE else None
                if name == IDLE and "idle_only_above" in o:
                    only_above = o["idle_only_above"]
                rules = _replace_rule(rules, Rule(name=name, kind=name, after=o[opt],
                                                  scope=scope, only_above=only_above))
        if "idle_only_above" in o and "idle_after" not in o:
            old = next((r for r in rules if r.name == IDLE), None)
            if old is None:
                raise ConfigError("--idle-only-above needs an idle rule (--idle-after SECONDS)")
            rules = _replace_rule(rules, dataclasses.replace(old, only_above=o["idle_only_above"]))
        emergency = policy.emergency
        if any(k in o for k in ("emergency_at", "emergency_target", "emergency_min_idle")):
            at = o.get("emergency_at", emergency.at if emergency else None)
            if at is None:
                raise ConfigError("--emergency-target/--emergency-min-idle need --emergency-at")
            target = o.get("emergency_target",
                           emergency.target if emergency else round(max(0.0, at - 0.1), 4))
            min_idle = o.get("emergency_min_idle", emergency.min_idle if emergency else 60.0)
            base_em = emergency or Emergency(at=at, target=target)
            emergency = dataclasses.replace(base_em, at=at, target=target, min_idle=min_idle)
        limits = dataclasses.replace(
            policy.limits,
            **{k: o[k] for k in ("max_per_pass", "max_per_minute") if k in o})
        prot = policy.protection
        changes: dict[str, Any] = {}
        for opt, attr in (("protect_applications", "applications"), ("protect_users", "users"),
                          ("protect_databases", "databases"), ("protect_networks", "networks")):
            if opt in o:
                changes[attr] = (*getattr(prot, attr), *o[opt])
        if o.get("allow_superuser"):
            changes["allow_superuser"] = True
        prot = dataclasses.replace(prot, **changes)
        top: dict[str, Any] = {}
        for k in ("interval", "enforce"):
            if k in o:
                top[k] = o[k]
        if "audit_log" in o:
            top["audit_log"] = tuple(o["audit_log"])
        return dataclasses.replace(policy, rules=rules, emergency=emergency, limits=limits,
                                   protection=prot, **top)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"invalid guard option: {exc}") from None
