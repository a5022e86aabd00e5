"""The Policy object: decides, explains and lists visible domains from parsed rules.

Semantics (design.md, "Policy"; vpsshell-policy(5)): default deny; any matching non-expired deny
beats every allow, whatever the rule or file order; any allow on a domain implies ``status`` on
it; who may use a domain's ``console`` may also ``watch`` it unless a rule denies ``watch``; a
policy with any error denies everything. Every such rule lives here and nowhere else: the
helper and ``vpsshell-admin`` both decide with :meth:`Policy.decide`, so what the admin tool
explains is what the helper does. The caller supplies the user and groups it has verified (the
daemon, from SO_PEERCRED and NSS): this module must never look identities up itself, never
trust a name it did not get from its caller, and never raise on an unknown action or domain.

A decision looks only at the rules that can match it: the rules are indexed by subject, and a
subject with many rules (a support group with a rule per rack, an operator with a rule per
tenant) also by domain, so a decision or a ``list`` costs about the same whatever the size of
the policy (bench/policy_scale.py). The index never holds a shared named set once per rule that
uses it, so its size stays proportional to the policy text.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace

from .model import (
    ALL_ACTIONS,
    CONFIRM_STRENGTH,
    SELF_SERVICE_ACTIONS,
    Decision,
    PolicyError,
    Rule,
)
from .parser import ParsedPolicy, gc_paused, parse_sources

NO_GRANT = "no rule grants this"


def allowed_by_self_service(decision: Decision, enabled: bool) -> bool:
    """A refused self-service action (``keys``) that no rule names at all, where the helper's
    ``keys_self_service`` lets every tenant manage their own account: allowed after all. A deny
    rule that names it still refuses (it matched). The helper and ``policy explain`` ask here."""
    return (
        enabled
        and decision.action in SELF_SERVICE_ACTIONS
        and not decision.allowed
        and decision.reason == NO_GRANT
    )


DENIED_BY_RULE = "denied by policy"

#: A subject with more rules than this gets its rules indexed by domain too; below it, looking
#: at each of its rules is as cheap as the index and saves the memory (most subjects are
#: tenants with one or two rules).
_FEW_RULES = 16
#: A rule naming more domains than this (usually through a named set shared by many rules) is
#: indexed once, by its set of domains, rather than once per domain.
_FEW_DOMAINS = 8

#: Rule positions (in file/line order): one int, or a list of them when there are several.
_Positions = int | list[int]


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


def _add(table: dict[str, _Positions], key: str, position: int) -> None:
    held = table.get(key)
    if held is None:
        table[key] = position
    elif isinstance(held, int):
        table[key] = [held, position]
    else:
        held.append(position)


def _positions(held: _Positions | None) -> Iterable[int]:
    if held is None:
        return ()
    if isinstance(held, int):
        return (held,)
    return held


class _ManyRules:
    """One subject's rules, by domain, for a subject with many of them."""

    __slots__ = ("by_domain", "wide", "by_domain_set")

    def __init__(self) -> None:
        #: domain -> rules naming at most _FEW_DOMAINS domains, this one among them
        self.by_domain: dict[str, _Positions] = {}
        #: rules for every domain (``*``)
        self.wide: list[int] = []
        #: larger domain sets -> the rules naming exactly that set
        self.by_domain_set: dict[frozenset[str], list[int]] = {}


class _RuleIndex:
    """Where to look for the rules that may match a (subject, domain): positions in the policy.

    ``covering`` returns every rule of the given subjects that covers the domain, and no other;
    the caller still checks actions and expiry exactly as for a full scan.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = rules
        self.users: dict[str, _Positions] = {}
        self.groups: dict[str, _Positions] = {}
        for position, rule in enumerate(rules):
            table = self.users if rule.subject_kind == "user" else self.groups
            _add(table, rule.subject_name, position)
        #: subjects with many rules: ("user"|"group", name) -> their rules by domain
        self.many: dict[tuple[str, str], _ManyRules] = {}
        #: domain -> the larger domain sets of ``many`` that hold it, each set listed once
        self.sets_with: dict[str, frozenset[str] | list[frozenset[str]]] = {}
        self._listed_sets: set[frozenset[str]] = set()
        for kind, table in (("user", self.users), ("group", self.groups)):
            for name, held in table.items():
                if isinstance(held, list) and len(held) > _FEW_RULES:
                    self.many[(kind, name)] = self._index_by_domain(held)

    def _index_by_domain(self, positions: list[int]) -> _ManyRules:
        index = _ManyRules()
        for position in positions:
            domains = self.rules[position].domains
            if domains is None:
                index.wide.append(position)
            elif len(domains) <= _FEW_DOMAINS:
                for domain in domains:
                    _add(index.by_domain, domain, position)
            else:
                same = index.by_domain_set.get(domains)
                if same is None:
                    index.by_domain_set[domains] = [position]
                    self._note_domain_set(domains)
                else:
                    same.append(position)
        return index

    def _note_domain_set(self, domains: frozenset[str]) -> None:
        if domains in self._listed_sets:
            return  # another subject names the same set
        self._listed_sets.add(domains)
        for domain in domains:
            held = self.sets_with.get(domain)
            if held is None:
                self.sets_with[domain] = domains  # most domains are in one set: no list
            elif isinstance(held, frozenset):
                self.sets_with[domain] = [held, domains]
            else:
                held.append(domains)

    def subjects(self, user: str, groups: frozenset[str]) -> list[tuple[str, str]]:
        """The subjects that have rules, among ``user:USER`` and ``group:G`` for each group."""
        found = [("user", user)] if user in self.users else []
        found += [("group", group) for group in groups if group in self.groups]
        return found

    def _all(self, subject: tuple[str, str]) -> Iterable[int]:
        table = self.users if subject[0] == "user" else self.groups
        return _positions(table.get(subject[1]))

    def of_subjects(self, subjects: list[tuple[str, str]]) -> list[int]:
        """Every rule of ``subjects``, in policy order."""
        found = [position for subject in subjects for position in self._all(subject)]
        found.sort()
        return found

    def covering(self, subjects: list[tuple[str, str]], domain: str) -> list[int]:
        """The rules of ``subjects`` that cover ``domain``, in policy order."""
        found: list[int] = []
        for subject in subjects:
            many = self.many.get(subject)
            if many is None:
                found.extend(p for p in self._all(subject) if self.rules[p].covers_domain(domain))
                continue
            found.extend(_positions(many.by_domain.get(domain)))
            found.extend(many.wide)
            if many.by_domain_set:
                found.extend(self._in_domain_sets(many, domain))
        found.sort()
        return found

    def _in_domain_sets(self, many: _ManyRules, domain: str) -> Iterator[int]:
        held = self.sets_with.get(domain)
        holding = [] if held is None else [held] if isinstance(held, frozenset) else held
        if len(holding) < len(many.by_domain_set):
            for domains in holding:
                yield from many.by_domain_set.get(domains, ())
        else:
            for domains, positions in many.by_domain_set.items():
                if domain in domains:
                    yield from positions


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
        with gc_paused():
            self._index = _RuleIndex(self.rules)

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

    def parse_with_sets(self, texts: Mapping[str, str]) -> Policy:
        """``texts`` as a policy of their own that may use this policy's named sets.

        For reading one rule typed on a command line against a large installed policy without
        parsing that policy again. The result holds only the rules of ``texts``.
        """
        known = {name: ("actions", members) for name, members in self.action_sets.items()}
        known |= {name: ("domains", members) for name, members in self.domain_sets.items()}
        names = list(texts)
        parsed = parse_sources(texts.items(), known_sets=known)
        return Policy.from_parsed(parsed, file_order=names, files=names)

    @property
    def broken(self) -> bool:
        return bool(self.errors)

    def fingerprint(self) -> tuple[object, ...] | None:
        """The directory fingerprint taken before loading (None if not loaded from a dir).

        Compare with :func:`vpsshell.policy.dir_fingerprint` to notice edits.
        """
        return self._fingerprint

    def rules_for(
        self, user: str, groups: Iterable[str], now: _dt.datetime | None = None
    ) -> list[Rule]:
        """Non-expired rules whose subject is ``user`` or one of ``groups``, in file order."""
        if isinstance(groups, str):
            raise TypeError("groups must be an iterable of group names, not a str")
        day = _local_date(now)
        subjects = self._index.subjects(user, frozenset(groups))
        rules = self.rules
        return [rules[p] for p in self._index.of_subjects(subjects) if rules[p].active_on(day)]

    def granted_domains(
        self, user: str, groups: Iterable[str], now: _dt.datetime | None = None
    ) -> set[str]:
        """Every domain an active allow rule of ``user`` or ``groups`` names: the only domains
        on which :meth:`decide` can allow them anything (``*`` is for denies only, and what a
        grant implies, ``status`` and ``watch``, it implies on its own domains)."""
        domains: set[str] = set()
        for rule in self.rules_for(user, groups, now):
            if rule.effect == "allow" and rule.domains is not None:
                domains |= rule.domains
        return domains

    def _covering(self, subjects: list[tuple[str, str]], domain: str, day: _dt.date) -> list[Rule]:
        """Non-expired rules of ``subjects`` that cover ``domain``, in file order."""
        rules = self.rules
        return [rules[p] for p in self._index.covering(subjects, domain) if rules[p].active_on(day)]

    @staticmethod
    def _evaluate(candidates: list[Rule], user: str, action: str, domain: str) -> Decision:
        """The decision from ``candidates`` (the active rules of the caller's subjects that may
        cover ``domain``): the one place where what a rule grants is worked out."""
        decision = Policy._evaluate_named(candidates, user, action, domain)
        if action == "watch" and not decision.matches:
            # Who may use a console may also watch it (read-only is less than read-write),
            # unless a rule names watch: a deny of watch still wins, and a grant of watch
            # decides alone, with its own confirm=. Otherwise the console's decision, with its
            # rules and its confirm=, is the watch's.
            console = Policy._evaluate_named(candidates, user, "console", domain)
            if console.allowed:
                return replace(console, action="watch", implied_by="console")
        return decision

    @staticmethod
    def _evaluate_named(candidates: list[Rule], user: str, action: str, domain: str) -> Decision:
        """The decision from the rules that name ``action`` (and, for ``status``, every allow)."""
        matches: list[Rule] = []
        confirm: str | None = None
        self_service = action in SELF_SERVICE_ACTIONS  # the caller's own: domains do not count
        for rule in candidates:
            if not self_service and not rule.covers_domain(domain):
                continue
            if action in rule.actions:
                matches.append(rule)
                if rule.effect == "allow" and _stronger(rule.confirm, confirm):
                    confirm = rule.confirm
            elif (
                action == "status"
                and rule.effect == "allow"
                and not rule.actions <= SELF_SERVICE_ACTIONS
            ):
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
        subjects = self._index.subjects(user, group_set)
        if action in SELF_SERVICE_ACTIONS:  # every rule of the caller's, whatever its domains
            day = _local_date(now)
            positions = self._index.of_subjects(subjects)
            candidates = [self.rules[p] for p in positions if self.rules[p].active_on(day)]
        else:
            candidates = self._covering(subjects, domain, _local_date(now)) if subjects else []
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
        subjects = self._index.subjects(user, frozenset(groups))
        if not subjects:
            return set()
        day = _local_date(now)
        visible = set()
        for domain in candidates:
            rules = self._covering(subjects, domain, day)
            if rules and self._evaluate(rules, user, "status", domain).allowed:
                visible.add(domain)
        return visible

    def __repr__(self) -> str:
        state = f"{len(self.errors)} errors" if self.errors else "ok"
        return f"<Policy {len(self.files)} files, {len(self.rules)} rules, {state}>"


def parse_policy(text: str, filename: str = "<string>") -> Policy:
    """One file's text as a whole policy. Errors are collected in ``policy.errors``."""
    return Policy.from_texts({filename: text})
