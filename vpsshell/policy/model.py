"""The policy's vocabulary: actions, built-in sets, limits, and the Rule/Decision/PolicyError types.

Everything else in ``vpsshell.policy`` is written in terms of these types, and the daemon reads
decisions through them. This module holds data and small pure predicates only: it must never
read files, look up users or groups, or import anything outside the standard library but
``vpsshell.checks`` (itself standard library only), where the domain-name rule is written once
for every part of vpsshell; so the engine stays testable from strings and cheap to import.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

# the rule for the domain names rules may name is the one every part of vpsshell uses
from vpsshell.checks import is_domain_name as is_domain_name

#: The closed list of actions a rule can grant or deny (design.md, "Policy").
ACTIONS: tuple[str, ...] = (
    "status",
    "start",
    "shutdown",
    "reboot",
    "poweroff",
    "reset",
    "console",
    "watch",
    "log",
    "sysrq",
    "events",
)
#: Actions on the caller's own account, not on a domain (``keys``: their SSH public keys). A
#: rule grants or denies them whatever domains it names; a grant of these alone may say ``*``
#: for DOMAINS (``allow group:tenants keys *``) and implies nothing on any domain. They are
#: not in ACTIONS (the actions on a domain, which the admin tool lists per domain).
SELF_SERVICE: tuple[str, ...] = ("keys",)
SELF_SERVICE_ACTIONS: frozenset[str] = frozenset(SELF_SERVICE)
ALL_ACTIONS: frozenset[str] = frozenset(ACTIONS) | SELF_SERVICE_ACTIONS

_VIEWER = frozenset({"status", "log", "watch", "events"})
#: Built-in action sets, by name without the ``@``. Policy files may not redefine them.
BUILTIN_ACTION_SETS: dict[str, frozenset[str]] = {
    "viewer": _VIEWER,
    # design.md lists start shutdown reboot console; poweroff and reset are added because a
    # tenant who may start and stop a domain must be able to stop a hung one (Lish allows it).
    "operator": _VIEWER | {"start", "shutdown", "reboot", "poweroff", "reset", "console"},
    "all": ALL_ACTIONS,
}

#: ``confirm=`` values, weakest first; a decision carries the strongest one that applies.
CONFIRM_STRENGTH: dict[str, int] = {"password": 1, "totp": 2}
OPTION_KEYS: tuple[str, ...] = ("expires", "reason", "confirm")

# Limits that keep a hostile or broken policy from exhausting memory or time. Crossing one
# is an error, and a policy with an error denies everything, so each is set well above what a
# real host needs; vpsshell-admin refuses a change that would cross one (see
# bench/README.md, "policy_scale.py", for the measurements behind the numbers).
#
#: Rules in the whole policy. A big host has some 5,000 tenants with one to three rules each
#: (~15,000 rules); a gateway in front of many hosts 50,000+ tenants (~150,000). A million is
#: more than six times that and still loads, in about 10 s into about 0.9 GiB (measured on 2
#: busy cores: 100,000 rules load in 1 s into 80 MiB; decisions cost the same at any size).
#: Much beyond it a policy is a generator gone wrong, not a host, and each reload would stall
#: the helper for longer than tenants should wait.
MAX_RULES = 1_000_000
#: Statements of 60-100 bytes: MAX_RULES rules fit in MAX_TOTAL_BYTES, and a gateway's
#: generated tenants file (~150,000 rules) in one file.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 128 * 1024 * 1024
MAX_FILES = 1000
MAX_LINE_CHARS = 4096
#: As many as rules: a named set per tenant (``domains @acme = ...``) must not run out first.
MAX_SETS = MAX_RULES
MAX_SET_MEMBERS = 1000
MAX_SET_DEPTH = 32
#: Total members copied while expanding set references, over the whole policy (a rule naming
#: one set shares it; one joining several sets or names copies them): ten per rule at MAX_RULES.
MAX_EXPANSION_WORK = 10 * MAX_RULES
MAX_ERRORS = 100
MAX_REASON_CHARS = 200

SUBJECT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,255}\$?")
SET_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class PolicyError(Exception):
    """One problem in a policy, located at ``file:line`` (line 0 when not line-specific).

    Collected into ``Policy.errors`` rather than raised; any error makes the policy deny
    everything.
    """

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(file, line, message)
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"

    def __repr__(self) -> str:
        return f"PolicyError({self.file!r}, {self.line!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyError):
            return NotImplemented
        return (self.file, self.line, self.message) == (other.file, other.line, other.message)

    def __hash__(self) -> int:
        return hash((self.file, self.line, self.message))


_BARE_REASON_RE = re.compile(r'[^\s"]+')


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``allow``/``deny`` line with its sets already expanded.

    ``domains`` is None for ``*`` (every domain, deny rules only). ``expires`` is the last day,
    host local time, on which the rule still matches.
    """

    file: str
    line: int
    effect: str  # "allow" | "deny"
    subject_kind: str  # "user" | "group"
    subject_name: str
    actions: frozenset[str]
    domains: frozenset[str] | None
    expires: _dt.date | None = None
    reason: str | None = None
    confirm: str | None = None

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def subject(self) -> str:
        return f"{self.subject_kind}:{self.subject_name}"

    def active_on(self, day: _dt.date) -> bool:
        """A rule matches up to and including its ``expires`` day."""
        return self.expires is None or day <= self.expires

    def applies_to(self, user: str, groups: frozenset[str]) -> bool:
        if self.subject_kind == "user":
            return self.subject_name == user
        return self.subject_name in groups

    def covers_domain(self, domain: str) -> bool:
        return self.domains is None or domain in self.domains

    def to_text(self) -> str:
        """The rule in canonical one-line form; parsing it gives back an equal rule."""
        if self.actions == ALL_ACTIONS:
            actions = "*"
        else:
            actions = ",".join(a for a in (*ACTIONS, *SELF_SERVICE) if a in self.actions)
        domains = "*" if self.domains is None else ",".join(sorted(self.domains))
        parts = [self.effect, self.subject, actions, domains]
        if self.expires is not None:
            parts.append(f"expires={self.expires.isoformat()}")
        if self.reason is not None:
            if _BARE_REASON_RE.fullmatch(self.reason):
                parts.append(f"reason={self.reason}")
            else:
                parts.append(f'reason="{self.reason}"')
        if self.confirm is not None:
            parts.append(f"confirm={self.confirm}")
        return " ".join(parts)


@dataclass(frozen=True)
class Decision:
    """The answer to "may USER do ACTION on DOMAIN", with everything needed to explain it.

    ``matches`` lists every non-expired rule that matched, in file/line order. ``deciding`` is
    the first matching deny when a rule denied, else the first matching allow; it is None on
    default deny, an unknown action, or a broken policy. ``implied_by`` names the action whose
    grant allowed this one when no rule names the action itself (``"console"`` for a
    ``watch``: console implies watch); ``matches``, ``deciding`` and ``confirm`` are then that
    action's.
    """

    allowed: bool
    action: str
    domain: str
    user: str
    matches: list[Rule] = field(default_factory=list)
    deciding: Rule | None = None
    reason: str | None = None
    confirm: str | None = None
    broken: bool = False
    implied_by: str | None = None

    @property
    def locations(self) -> list[str]:
        """``file:line`` of every matching rule."""
        return [rule.location for rule in self.matches]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary, e.g. for the audit log."""
        return {
            "allowed": self.allowed,
            "action": self.action,
            "domain": self.domain,
            "user": self.user,
            "rule": self.deciding.location if self.deciding else None,
            "matches": self.locations,
            "reason": self.reason,
            "confirm": self.confirm,
            "broken": self.broken,
            "implied_by": self.implied_by,
        }
