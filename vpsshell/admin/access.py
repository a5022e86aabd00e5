"""Who may do what under a policy: effective (who, action, domain) triples, and edits' diffs.

Rules name subjects (``user:alice``, ``group:acme``) and sets; admins think in "who may now do
what". This module answers that with ``Policy.decide`` itself, the function the helper decides
with, so deny-wins, expiry, the implied ``status`` and "console implies watch" are exactly the
helper's; it must never add a rule of its own about who may do what. "Who" is every user a rule
names (with their real groups from NSS), every known member of every group a rule names, and,
per such group, a ``group:NAME`` line for "any member" (so a grant to a group with no members
yet still shows). Only domains named by allow rules can ever be allowed
(``Policy.granted_domains``), so the search is finite. A diff looks only where the change can
matter: at the principals a changed rule applies to and the domains it names (a change to one
tenant's grant costs the same on a policy of a million rules as on one of ten). This module
never changes files.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from vpsshell.admin.identities import Identities
from vpsshell.policy import ACTIONS, Decision, Policy, Rule

_ACTION_ORDER = {action: index for index, action in enumerate(ACTIONS)}
#: The user name used for "any member of a group": no user rule can name it.
_NOBODY = ""


@dataclass(frozen=True)
class Principal:
    """Someone decisions are made for: a real user with groups, or "any member of a group"."""

    label: str  # "alice" or "group:acme"
    user: str
    groups: frozenset[str]

    @property
    def is_group(self) -> bool:
        return self.user == _NOBODY


def user_principal(user: str, identities: Identities) -> Principal:
    return Principal(user, user, frozenset(identities.groups_of(user) or ()))


def group_principal(group: str) -> Principal:
    return Principal(f"group:{group}", _NOBODY, frozenset({group}))


def subject_principal(subject: str, identities: Identities) -> Principal:
    """The principal for a rule subject (``user:NAME`` or ``group:NAME``)."""
    kind, _, name = subject.partition(":")
    return group_principal(name) if kind == "group" else user_principal(name, identities)


@dataclass(frozen=True)
class Access:
    """One effective permission: ``who`` may do ``action`` on ``domain`` (maybe confirmed)."""

    who: str
    action: str
    domain: str
    confirm: str | None = None

    def sort_key(self) -> tuple[str, str, int]:
        return (self.who, self.domain, _ACTION_ORDER.get(self.action, 99))

    def __str__(self) -> str:
        suffix = f" (confirm={self.confirm})" if self.confirm else ""
        return f"{self.who} {self.action} {self.domain}{suffix}"


def principals(policies: Iterable[Policy], identities: Identities) -> list[Principal]:
    """Everyone any rule of ``policies`` is about, users first, in name order."""
    users: set[str] = set()
    groups: set[str] = set()
    for policy in policies:
        for rule in policy.rules:
            if rule.subject_kind == "user":
                users.add(rule.subject_name)
            else:
                groups.add(rule.subject_name)
    for group in groups:
        users.update(identities.members_of(group))
    found = [user_principal(user, identities) for user in sorted(users)]
    found += [group_principal(group) for group in sorted(groups)]
    return found


def candidate_domains(policy: Policy, principal: Principal, day: _dt.date) -> set[str]:
    """Every domain on which ``principal`` may be allowed anything on ``day``."""
    at = _dt.datetime.combine(day, _dt.time())
    return policy.granted_domains(principal.user, principal.groups, at)


def decisions_for(
    policy: Policy, principal: Principal, domain: str, now: _dt.datetime
) -> list[Decision]:
    """The decision for every action on ``domain``, in ACTIONS order."""
    return [
        policy.decide(principal.user, principal.groups, action, domain, now) for action in ACTIONS
    ]


def effective_access(
    policy: Policy, principal: Principal, now: _dt.datetime, only: set[str] | None = None
) -> set[Access]:
    """Everything ``principal`` may do under ``policy`` (nothing if the policy is broken).

    ``only``: look at these domains only (None: every domain).
    """
    if policy.errors:
        return set()
    found: set[Access] = set()
    domains = candidate_domains(policy, principal, now.date())
    if only is not None:
        domains &= only
    for domain in domains:
        for decision in decisions_for(policy, principal, domain, now):
            if decision.allowed:
                found.add(Access(principal.label, decision.action, domain, decision.confirm))
    return found


def all_access(
    policy: Policy, people: Iterable[Principal], now: _dt.datetime
) -> dict[Principal, set[Access]]:
    return {principal: effective_access(policy, principal, now) for principal in people}


#: A subject ("user"|"group", name) -> the domains its changed rules name (None: ``*``).
Changes = dict[tuple[str, str], set[str] | None]


def changed_subjects(old: Policy, new: Policy) -> Changes | None:
    """The subjects whose rules differ between ``old`` and ``new``, in what decides access.

    Rules are compared by what decisions read (effect, actions, domains, expiry, confirm=),
    not by where they are: moving or re-commenting a rule changes nothing. None when either
    policy is broken (then everyone's access changes).
    """
    if old.errors or new.errors:
        return None

    def meaning(policy: Policy) -> Counter[tuple[object, ...]]:
        return Counter(
            (r.subject_kind, r.subject_name, r.effect, r.actions, r.domains, r.expires, r.confirm)
            for r in policy.rules
        )

    before, after = meaning(old), meaning(new)
    changes: Changes = {}
    for key in (before - after) + (after - before):
        subject = (str(key[0]), str(key[1]))
        domains = key[4]
        known = changes.get(subject, set())
        if domains is None or known is None:
            changes[subject] = None
        else:
            assert isinstance(domains, frozenset)
            changes[subject] = known | domains
    return changes


def _affected(
    old: Policy, new: Policy, changes: Changes, identities: Identities
) -> list[tuple[Principal, set[str] | None]]:
    """The principals a change can matter to, each with the domains it can matter on."""
    groups = {name for kind, name in changes if kind == "group"}
    if groups:  # any member of a changed group, as principals() finds them
        people = principals([old, new], identities)
    else:  # only the users named: no need to ask NSS about everybody
        people = [user_principal(name, identities) for _, name in sorted(changes)]
    found: list[tuple[Principal, set[str] | None]] = []
    for principal in people:
        subjects = [("group", group) for group in principal.groups]
        if not principal.is_group:
            subjects.append(("user", principal.user))
        touched = [changes[subject] for subject in subjects if subject in changes]
        if not touched:
            continue
        domains: set[str] | None = set()
        for names in touched:
            domains = None if names is None or domains is None else domains | names
        found.append((principal, domains))
    return found


def access_diff(
    old: Policy, new: Policy, identities: Identities, now: _dt.datetime
) -> tuple[list[Access], list[Access]]:
    """(added, removed) effective permissions when ``old`` is replaced by ``new``."""
    before: set[Access] = set()
    after: set[Access] = set()
    changes = changed_subjects(old, new)
    looked_at: list[tuple[Principal, set[str] | None]]
    if changes is None:
        looked_at = [(p, None) for p in principals([old, new], identities)]
    else:
        looked_at = _affected(old, new, changes, identities)
    for principal, domains in looked_at:
        before |= effective_access(old, principal, now, domains)
        after |= effective_access(new, principal, now, domains)
    added = sorted(after - before, key=Access.sort_key)
    removed = sorted(before - after, key=Access.sort_key)
    return added, removed


def format_diff(added: list[Access], removed: list[Access]) -> list[str]:
    """Lines for an admin: ``+ who action[,action...] domain`` (``-`` for what is lost).

    Triples that differ only in the action are joined into one line, in ACTIONS order.
    """
    if not added and not removed:
        return ["no change in who may do what"]
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    for sign, accesses in (("+", added), ("-", removed)):
        for access in sorted(accesses, key=Access.sort_key):
            key = (access.who, access.domain, sign, access.confirm or "")
            grouped.setdefault(key, []).append(access.action)
    lines = ["changes in who may do what (+ now allowed, - no longer allowed):"]
    for (who, domain, sign, confirm), actions in sorted(grouped.items()):
        suffix = f" (confirm={confirm})" if confirm else ""
        lines.append(f"{sign} {who} {','.join(actions)} {domain}{suffix}")
    if any(who.startswith("group:") for who, *_ in grouped):
        lines.append("(group:NAME: any member of that group)")
    return lines


def allowing_rules(decisions: Iterable[Decision]) -> list[Rule]:
    """The allow rules behind the allowed decisions, each once, in file/line order."""
    seen: dict[tuple[str, int], Rule] = {}
    for decision in decisions:
        if decision.allowed:
            for rule in decision.matches:
                if rule.effect == "allow":
                    seen.setdefault((rule.file, rule.line), rule)
    return [seen[key] for key in sorted(seen)]
