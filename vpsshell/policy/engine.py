"""The Policy object: decides, explains and lists visible domains from parsed rules.

Semantics (design.md, "Policy"): default deny; any matching non-expired deny beats every allow,
whatever the rule or file order; any allow on a domain implies ``status`` on it; a policy with
any error denies everything. The caller supplies the user and groups it has verified (the
daemon, from SO_PEERCRED and NSS): this module must never look identities up itself, never
trust a name it did not get from its caller, and never raise on an unknown action or domain.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence

from .model import ALL_ACTIONS, CONFIRM_STRENGTH, Decision, PolicyError, Rule
from .parser import ParsedPolicy, parse_sources

NO_GRANT = "no rule grants this"
DENIED_BY_RULE = "denied by policy"


def _local_date(now: _dt.datetime | None) -> _dt.date:
    """The host-local calendar day of ``now`` (naive datetimes are taken as local time)."""
    if now is None:
        return _dt.datetime.now().date()
    if now.tzinfo is not None:
        return now.astimezone().date()
    return now.date()


def _stronger(candidate: str | None, current: str | None) -> bool:
    """Whether confirm= value ``candidate`` asks for more than ``current``."""
    if candidate is None:
        return False
    return current is None or CONFIRM_STRENGTH[candidate] > CONFIRM_STRENGTH[current]


class Policy:
    """A loaded policy: the expanded rules, the user-defined sets and any errors.

    Construct it with :func:`parse_policy`, :meth:`from_texts` or
    :func:`vpsshell.policy.load_policy_dir`; it is immutable in use and safe to share.
    """

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        action_sets: Mapping[str, frozenset[str]] | None = None,
        domain_sets: Mapping[str, frozenset[str]] | None = None,
        errors: Sequence[PolicyError] = (),
        files: Sequence[str] = (),
        fingerprint: tuple[object, ...] | None = None,
        ignored_files: Sequence[str] = (),
    ) -> None:
        self.rules: list[Rule] = list(rules)
        self.action_sets: dict[str, frozenset[str]] = dict(action_sets or {})
        self.domain_sets: dict[str, frozenset[str]] = dict(domain_sets or {})
        self.errors: list[PolicyError] = list(errors)
        self.files: list[str] = list(files)
        self.ignored_files: list[str] = list(ignored_files)
        self._fingerprint = fingerprint
        # (subject kind, name) -> [(position in file/line order, rule)]
        self._by_subject: dict[tuple[str, str], list[tuple[int, Rule]]] = {}
        for position, rule in enumerate(self.rules):
            key = (rule.subject_kind, rule.subject_name)
            self._by_subject.setdefault(key, []).append((position, rule))

    @classmethod
    def from_parsed(
        cls,
        parsed: ParsedPolicy,
        *,
        file_order: Sequence[str],
        files: Sequence[str],
        extra_errors: Sequence[PolicyError] = (),
        fingerprint: tuple[object, ...] | None = None,
        ignored_files: Sequence[str] = (),
    ) -> Policy:
        """Build from parser output; errors are sorted by file order, then line."""
        order = {name: index for index, name in enumerate(file_order)}
        errors = sorted(
            [*extra_errors, *parsed.errors], key=lambda e: (order.get(e.file, -1), e.line)
        )
        return cls(
            parsed.rules,
            parsed.action_sets,
            parsed.domain_sets,
            errors,
            files,
            fingerprint,
            ignored_files,
        )

    @classmethod
    def from_texts(cls, texts: Mapping[str, str]) -> Policy:
        """Several files' texts, keyed by file name, in the mapping's order, as one policy."""
        names = list(texts)
        parsed = parse_sources(texts.items())
        return cls.from_parsed(parsed, file_order=names, files=names)

    @property
    def broken(self) -> bool:
        return bool(self.errors)

    def fingerprint(self) -> tuple[object, ...] | None:
        """The directory fingerprint taken before loading (None if not loaded from a dir).

        Compare with :func:`vpsshell.policy.dir_fingerprint` to notice edits.
        """
        return self._fingerprint

    def _rules_for(self, user: str, groups: frozenset[str], day: _dt.date) -> list[Rule]:
        """Non-expired rules whose subject is the user or one of the groups, in file order."""
        found = list(self._by_subject.get(("user", user), ()))
        for group in groups:
            found.extend(self._by_subject.get(("group", group), ()))
        found.sort(key=lambda item: item[0])
        return [rule for _, rule in found if rule.active_on(day)]

    @staticmethod
    def _evaluate(candidates: list[Rule], user: str, action: str, domain: str) -> Decision:
        matches: list[Rule] = []
        confirm: str | None = None
        for rule in candidates:
            if not rule.covers_domain(domain):
                continue
            if action in rule.actions:
                matches.append(rule)
                if rule.effect == "allow" and _stronger(rule.confirm, confirm):
                    confirm = rule.confirm
            elif action == "status" and rule.effect == "allow":
                # Any grant on a domain implies seeing it; its confirm= guards only its actions.
                matches.append(rule)
        denies = [rule for rule in matches if rule.effect == "deny"]
        if denies:
            return Decision(
                allowed=False,
                action=action,
                domain=domain,
                user=user,
                matches=matches,
                deciding=denies[0],
                reason=denies[0].reason or DENIED_BY_RULE,
            )
        if matches:
            return Decision(
                allowed=True,
                action=action,
                domain=domain,
                user=user,
                matches=matches,
                deciding=matches[0],
                confirm=confirm,
            )
        return Decision(allowed=False, action=action, domain=domain, user=user, reason=NO_GRANT)

    def decide(
        self,
        user: str,
        groups: Iterable[str],
        action: str,
        domain: str,
        now: _dt.datetime | None = None,
    ) -> Decision:
        """May ``user`` (member of ``groups``) do ``action`` on ``domain`` at ``now``?"""
        if isinstance(groups, str):
            raise TypeError("groups must be an iterable of group names, not a str")
        group_set = frozenset(groups)
        if self.errors:
            return Decision(
                allowed=False,
                action=action,
                domain=domain,
                user=user,
                reason=f"policy is broken: {self.errors[0]}",
                broken=True,
            )
        if action not in ALL_ACTIONS:
            return Decision(
                allowed=False,
                action=action,
                domain=domain,
                user=user,
                reason=f"unknown action {action!r}",
            )
        candidates = self._rules_for(user, group_set, _local_date(now))
        return self._evaluate(candidates, user, action, domain)

    def explain(
        self,
        user: str,
        groups: Iterable[str],
        action: str,
        domain: str,
        now: _dt.datetime | None = None,
    ) -> Decision:
        """Same as :meth:`decide`; the Decision lists every matching rule and its location."""
        return self.decide(user, groups, action, domain, now)

    def visible_domains(
        self,
        user: str,
        groups: Iterable[str],
        candidates: Iterable[str],
        now: _dt.datetime | None = None,
    ) -> set[str]:
        """The ``candidates`` on which ``user`` may do ``status`` (so they appear in ``list``)."""
        if isinstance(groups, str):
            raise TypeError("groups must be an iterable of group names, not a str")
        if self.errors:
            return set()
        rules = self._rules_for(user, frozenset(groups), _local_date(now))
        if not rules:
            return set()
        return {d for d in candidates if self._evaluate(rules, user, "status", d).allowed}

    def __repr__(self) -> str:
        state = f"{len(self.errors)} errors" if self.errors else "ok"
        return f"<Policy {len(self.files)} files, {len(self.rules)} rules, {state}>"


def parse_policy(text: str, filename: str = "<string>") -> Policy:
    """One file's text as a whole policy. Errors are collected in ``policy.errors``."""
    return Policy.from_texts({filename: text})
