"""``policy check --strict``: rules that can never match and sets nobody uses.

A valid policy can still hold dead weight that misleads whoever reads it: a rule past its
``expires=`` day, an allow that a deny for the same subject always beats, a subject that is
not a user or group NSS knows, a named set no rule reaches (and, found by backend_domains.py, a
domain the backend does not know). These are warnings, located
``file:line`` like errors. This module only reads the parsed policy and the files' text.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vpsshell.admin.identities import Identities
from vpsshell.policy import Policy, Rule
from vpsshell.policy.parser import tokenize_line


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: warning: {self.message}"


def _lasts_as_long(deny: Rule, allow: Rule) -> bool:
    """Whether ``deny`` is in force on every day ``allow`` is."""
    if deny.expires is None:
        return True
    return allow.expires is not None and allow.expires <= deny.expires


def _shadowing_denies(allow: Rule, denies: list[Rule]) -> list[Rule] | None:
    """The denies that together beat ``allow`` everywhere it matches, or None if they don't.

    An allow also matches ``status`` on its domains (the implied grant), so that must be
    denied too for the allow to be dead. The ``watch`` that a ``console`` grant implies needs
    no deny of its own: it holds only where the console is allowed.
    """
    if allow.domains is None:
        return None
    used: dict[tuple[str, int], Rule] = {}
    for domain in allow.domains:
        for action in allow.actions | {"status"}:
            deny = next(
                (d for d in denies if action in d.actions and d.covers_domain(domain)), None
            )
            if deny is None:
                return None
            used.setdefault((deny.file, deny.line), deny)
    return [used[key] for key in sorted(used)]


def dead_rules(policy: Policy, day: _dt.date) -> list[Finding]:
    """Expired rules, and allows that a deny for the same subject always beats."""
    findings: list[Finding] = []
    denies_by_subject: dict[str, list[Rule]] = {}
    for rule in policy.rules:
        if rule.effect == "deny" and rule.active_on(day):
            denies_by_subject.setdefault(rule.subject, []).append(rule)
    for rule in policy.rules:
        if not rule.active_on(day):
            assert rule.expires is not None
            findings.append(
                Finding(
                    rule.file,
                    rule.line,
                    f"expired on {rule.expires.isoformat()}: this rule never matches",
                )
            )
            continue
        if rule.effect != "allow":
            continue
        denies = [d for d in denies_by_subject.get(rule.subject, []) if _lasts_as_long(d, rule)]
        shadow = _shadowing_denies(rule, denies)
        if shadow:
            where = ", ".join(d.location for d in shadow)
            findings.append(
                Finding(
                    rule.file, rule.line, f"never takes effect: {rule.subject} is denied by {where}"
                )
            )
    return findings


def unknown_subjects(policy: Policy, identities: Identities) -> list[Finding]:
    """Rules whose subject is not a user or group NSS knows (first rule per subject)."""
    findings: list[Finding] = []
    seen: set[str] = set()
    for rule in policy.rules:
        if rule.subject in seen:
            continue
        seen.add(rule.subject)
        if rule.subject_kind == "user":
            known = identities.user_exists(rule.subject_name)
        else:
            known = identities.group_exists(rule.subject_name)
        if not known:
            findings.append(
                Finding(
                    rule.file,
                    rule.line,
                    f"no such {rule.subject_kind} {rule.subject_name!r} (NSS); "
                    "this rule matches nobody",
                )
            )
    return findings


def _statements(text: str) -> list[tuple[int, list[str]]]:
    """(first line, tokens) of each statement; lines the parser rejects are skipped."""
    statements: list[tuple[int, list[str]]] = []
    tokens: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        if not start:
            start, tokens = number, []
        try:
            more, continues = tokenize_line(raw.removesuffix("\r"))
        except Exception:  # the parser reports it as an error; nothing to lint here
            more, continues = [], False
        tokens.extend(more)
        if continues:
            continue
        if tokens:
            statements.append((start, tokens))
        start = 0
    return statements


def _set_refs(token: str) -> list[str]:
    return [
        item[1:]
        for part in token.split("=")
        for item in part.split(",")
        if item.startswith("@") and len(item) > 1
    ]


def unused_sets(texts: Mapping[str, str]) -> list[Finding]:
    """Named sets that no rule uses, directly or through other sets."""
    defined: dict[str, tuple[str, int]] = {}
    members: dict[str, list[str]] = {}
    used_by_rules: set[str] = set()
    for file, text in texts.items():
        for line, tokens in _statements(text):
            if tokens[0] in ("actions", "domains"):
                refs = [ref for token in tokens[1:] for ref in _set_refs(token)]
                if refs:
                    defined.setdefault(refs[0], (file, line))
                    members.setdefault(refs[0], []).extend(refs[1:])
            elif tokens[0] in ("allow", "deny"):
                for token in tokens[2:]:
                    if "=" not in token:  # key=value options never name sets
                        used_by_rules.update(_set_refs(token))
    reached: set[str] = set()
    pending = list(used_by_rules)
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        pending.extend(members.get(name, []))
    return [
        Finding(file, line, f"set @{name} is never used by a rule")
        for name, (file, line) in defined.items()
        if name not in reached
    ]


def strict_findings(
    policy: Policy,
    texts: Mapping[str, str],
    identities: Identities,
    day: _dt.date,
    more: Sequence[Finding] = (),
) -> list[Finding]:
    """Every ``--strict`` warning (with ``more`` found elsewhere), in file order then line."""
    order = {name: index for index, name in enumerate(texts)}
    findings = dead_rules(policy, day) + unknown_subjects(policy, identities) + unused_sets(texts)
    findings += more
    return sorted(set(findings), key=lambda f: (order.get(f.file, -1), f.line, f.message))
