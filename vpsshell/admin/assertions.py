"""``policy test FILE``: an admin's own expectations of the policy, checked line by line.

A test file holds one assertion per line, ``allow|deny USER ACTION DOMAIN [groups=G1,G2]``,
with ``#`` comments and blank lines. USER's groups come from NSS unless ``groups=`` gives them
(so a CI machine without the real users can still test group rules). Every line is checked;
failures are reported as ``file:line``. This module only parses and evaluates; it never
changes the policy.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from vpsshell.admin.identities import Identities
from vpsshell.policy import ACTIONS, Decision, Policy
from vpsshell.policy.model import SUBJECT_NAME_RE, is_domain_name


@dataclass(frozen=True)
class Assertion:
    file: str
    line: int
    expect_allow: bool
    user: str
    action: str
    domain: str
    groups: tuple[str, ...] | None  # None: ask NSS

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        expected = "allow" if self.expect_allow else "deny"
        return f"{expected} {self.user} {self.action} {self.domain}"


@dataclass(frozen=True)
class Problem:
    """A line of the test file that is not a valid assertion."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def _parse_line(file: str, number: int, words: list[str]) -> Assertion:
    if len(words) not in (4, 5) or words[0] not in ("allow", "deny"):
        raise ValueError("expected 'allow|deny USER ACTION DOMAIN [groups=G1,G2]'")
    effect, user, action, domain = words[:4]
    user = user.removeprefix("user:")
    if not SUBJECT_NAME_RE.fullmatch(user):
        raise ValueError(f"bad user name {user!r}")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r} (one of: {' '.join(ACTIONS)})")
    if not is_domain_name(domain):
        raise ValueError(f"bad domain name {domain!r}")
    groups: tuple[str, ...] | None = None
    if len(words) == 5:
        key, sep, value = words[4].partition("=")
        if key != "groups" or not sep:
            raise ValueError(f"unexpected {words[4]!r} (only groups=G1,G2 may follow)")
        groups = tuple(g for g in value.split(",") if g)
        if not all(SUBJECT_NAME_RE.fullmatch(g) for g in groups):
            raise ValueError(f"bad group list {value!r}")
    return Assertion(file, number, effect == "allow", user, action, domain, groups)


def parse_assertions(text: str, file: str) -> tuple[list[Assertion], list[Problem]]:
    assertions: list[Assertion] = []
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        try:
            assertions.append(_parse_line(file, number, words))
        except ValueError as exc:
            problems.append(Problem(file, number, str(exc)))
    return assertions, problems


@dataclass(frozen=True)
class Outcome:
    assertion: Assertion
    decision: Decision
    groups: tuple[str, ...]
    unknown_user: bool

    @property
    def passed(self) -> bool:
        return self.decision.allowed == self.assertion.expect_allow


def evaluate(
    policy: Policy, assertions: list[Assertion], identities: Identities, now: _dt.datetime
) -> list[Outcome]:
    outcomes = []
    for assertion in assertions:
        unknown = False
        if assertion.groups is not None:
            groups = assertion.groups
        else:
            found = identities.groups_of(assertion.user)
            unknown = found is None
            groups = tuple(found or ())
        decision = policy.decide(assertion.user, groups, assertion.action, assertion.domain, now)
        outcomes.append(Outcome(assertion, decision, groups, unknown))
    return outcomes


def describe_failure(outcome: Outcome) -> str:
    """``file:line: expected allow, got deny: USER ACTION DOMAIN (why)``."""
    assertion, decision = outcome.assertion, outcome.decision
    got = "allow" if decision.allowed else "deny"
    expected = "allow" if assertion.expect_allow else "deny"
    if decision.deciding is not None:
        why = f"{decision.deciding.location}: {decision.deciding.to_text()}"
        if decision.implied_by:
            why += f"; {decision.implied_by} implies {decision.action}"
    else:
        why = decision.reason or "no rule matches"
    if outcome.unknown_user:
        why += f"; note: {assertion.user} is not a known user, so no groups were used"
    return (
        f"{assertion.location}: expected {expected}, got {got}: "
        f"{assertion.user} {assertion.action} {assertion.domain} ({why})"
    )
