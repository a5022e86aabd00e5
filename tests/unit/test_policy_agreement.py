"""``vpsshell-admin policy explain/who/list/test`` and the helper never disagree.

For generated policies (users and groups, actions and action sets, domains, domain sets and
``*`` in denies, ``expires=`` around a generated day, ``confirm=password``, now and then a
broken file) and generated group memberships, every (user, action, domain) is decided by the
helper's own decision function, ``Authorizer.decide``, called as the helper calls it (caller,
action, domain; no time given, so the host's clock, here set to the generated time), and each
answer must be what the admin tool prints: the same allow or deny, the same ``confirm=``, the
same deciding rule. A rule about who may do what that only one side applies (as "console
implies watch" once lived only in the helper) makes this fail.

The admin commands run in process through ``vpsshell.admin.main.run`` on a real policy
directory, as an admin runs them; the helper's policy is loaded by its own ``PolicyState``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vpsshell.admin.identities import StaticIdentities
from vpsshell.admin.main import run
from vpsshell.daemon.authorization import Authorizer
from vpsshell.daemon.peer import Caller
from vpsshell.daemon.policy_state import PolicyState
from vpsshell.policy import ACTIONS, Decision, Policy, engine

USERS = ("u0", "u1", "u2", "u3")
GROUPS = ("g0", "g1", "g2")
DOMAINS = ("d0", "d1", "d2", "d3")
#: d9 is named by no rule: only a deny's ``*`` covers it
ASKED_DOMAINS = (*DOMAINS, "d9")
#: Allows name console more often than the rest, and denies watch, so that most examples meet
#: "console implies watch" (a watch through console alone, a watch denied beside a console).
ALLOW_WORDS = (*ACTIONS, *["console"] * 6, "@viewer", "@operator", "@all", "@ops")
DENY_WORDS = (*ACTIONS, *["watch"] * 3, "@viewer", "@ops")
FILES = ("10-a.policy", "20-b.policy")
#: The user name that stands for "any member of group G" (``group:G`` in ``who``): in no rule.
MEMBER = "member"


# -- generated policies ------------------------------------------------------------------------


@st.composite
def rule_lines(draw: st.DrawFn, today: dt.date) -> str:
    effect = draw(st.sampled_from(["allow", "allow", "allow", "deny"]))
    kind = draw(st.sampled_from(["user", "group"]))
    name = draw(st.sampled_from(USERS if kind == "user" else GROUPS))
    if draw(st.integers(0, 9)) == 0:
        actions = "*"
    else:
        pool = ALLOW_WORDS if effect == "allow" else DENY_WORDS
        actions = ",".join(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3)))
    domain_words = [*DOMAINS, "@pair", *(["*"] if effect == "deny" else [])]
    domains = draw(st.lists(st.sampled_from(domain_words), min_size=1, max_size=2))
    words = [effect, f"{kind}:{name}", actions, *domains]
    offset = draw(st.sampled_from([None, None, None, -1, 0, 1]))
    if offset is not None:
        words.append(f"expires={(today + dt.timedelta(days=offset)).isoformat()}")
    if effect == "allow" and draw(st.booleans()):
        words.append("confirm=password")
    if effect == "deny" and draw(st.booleans()):
        words.append('reason="not now"')
    return " ".join(words)


@dataclass(frozen=True)
class Case:
    now: dt.datetime
    files: dict[str, str]
    members: dict[str, tuple[str, ...]]  # user -> groups, as NSS would answer
    user: str
    action: str
    domain: str


@st.composite
def cases(draw: st.DrawFn) -> Case:
    day = dt.date(2026, 1, 1) + dt.timedelta(days=draw(st.integers(0, 730)))
    at = draw(st.sampled_from([dt.time(0, 0), dt.time(12, 0), dt.time(23, 59, 59)]))
    ops = ",".join(draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3)))
    lines = [f"actions @ops = {ops}", "domains @pair = d0 d1"]
    lines += draw(st.lists(rule_lines(day), min_size=1, max_size=10))
    if draw(st.integers(0, 19)) == 0:
        lines.append("allow user:u0 fly d0")  # an unknown action: the whole policy is broken
    split = draw(st.integers(0, len(lines)))
    # the sets may be defined in the second file and used in the first
    files = {
        FILES[0]: "".join(line + "\n" for line in lines[split:]),
        FILES[1]: "".join(line + "\n" for line in lines[:split]),
    }
    members = {
        user: tuple(sorted(draw(st.frozensets(st.sampled_from(GROUPS), max_size=2))))
        for user in USERS
    }
    return Case(
        now=dt.datetime.combine(day, at),
        files=files,
        members=members,
        user=draw(st.sampled_from(USERS)),
        action=draw(st.sampled_from(ACTIONS)),
        domain=draw(st.sampled_from(ASKED_DOMAINS)),
    )


# -- the two sides -------------------------------------------------------------------------------


@dataclass
class Site:
    root: Path
    policy_dir: Path
    config: Path

    def install(self, case: Case) -> None:
        for name, text in case.files.items():
            (self.policy_dir / name).write_text(text)
            os.chmod(self.policy_dir / name, 0o644)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="vpsshell-agreement-"))
    policy_dir = root / "policy.d"
    policy_dir.mkdir(mode=0o755)
    config = root / "vpsshelld.toml"
    config.write_text(f'policy_dir = "{policy_dir}"\n')
    yield Site(root, policy_dir, config)
    shutil.rmtree(root, ignore_errors=True)


def admin(site: Site, case: Case, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(
        ["--config", str(site.config), "policy", *argv],
        stdout=out,
        stderr=err,
        environ={"PATH": "/usr/bin:/bin"},
        now=case.now,
        identities=StaticIdentities(case.members),
    )
    return code, out.getvalue()


class Helper:
    """The helper's decision function over the helper's own loading of the directory."""

    def __init__(self, site: Site, case: Case) -> None:
        state = PolicyState(str(site.policy_dir))
        state.reload()
        # Only the policy is needed to decide; the rest of an Authorizer (backend, password
        # and account checks) plays no part in a decision, so it is not built.
        self.api = Authorizer.__new__(Authorizer)
        self.api.policy = state
        self.case = case

    def caller(self, user: str) -> Caller:
        groups = self.case.members.get(user, ())
        return Caller(uid=10_000, gid=10_000, pid=1, user=user, groups=groups)

    def decide(self, caller: Caller, action: str, domain: str) -> Decision:
        return self.api.decide(caller, action, domain)

    def visible(self, caller: Caller, domains: tuple[str, ...]) -> set[str]:
        """Which of ``domains`` the tenant's ``list`` shows, asked as ``op_list`` asks."""
        policy = self.api.policy.policy
        return policy.visible_domains(caller.user, caller.groups, list(domains))

    def allowed(self, caller: Caller, domain: str) -> dict[str, str | None]:
        """action -> confirm= for every action ``caller`` may do on ``domain``."""
        found = {}
        for action in ACTIONS:
            decision = self.decide(caller, action, domain)
            if decision.allowed:
                found[action] = decision.confirm
        return found


@contextmanager
def host_clock_at(now: dt.datetime) -> Iterator[None]:
    """The helper decides at the host's time (``now`` not given): make that ``now``.

    The admin tool is always given its time, so it is not affected.
    """
    host_local_date = engine._local_date

    def local_date(given: dt.datetime | None) -> dt.date:
        return host_local_date(now if given is None else given)

    with mock.patch.object(engine, "_local_date", local_date):
        yield


def group_caller(helper: Helper, group: str) -> Caller:
    return helper.caller(MEMBER)._replace(groups=(group,))


def rows_by(rows: list[dict[str, object]], key: str) -> dict[str, dict[str, str | None]]:
    """``who``/``list`` JSON rows as {who or domain: {action: confirm}}."""
    found: dict[str, dict[str, str | None]] = {}
    for row in rows:
        actions = row["actions"]
        confirm = row["confirm"]
        assert isinstance(actions, list) and isinstance(confirm, dict)
        found[str(row[key])] = {action: confirm.get(action) for action in actions}
    return found


# -- the property --------------------------------------------------------------------------------

ISSUE_CASE = Case(
    now=dt.datetime(2026, 6, 1, 12, 0),
    files={FILES[0]: "allow user:alice console web1\n", FILES[1]: ""},
    members={"alice": ("alice",)},
    user="alice",
    action="watch",
    domain="web1",
)


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(case=cases())
@example(case=ISSUE_CASE)
def test_admin_answers_are_the_helpers_decisions(site: Site, case: Case) -> None:
    site.install(case)
    helper = Helper(site, case)
    broken = bool(helper.api.policy.policy.errors)
    users = sorted(case.members)
    domains = ASKED_DOMAINS if case.domain in ASKED_DOMAINS else (case.domain,)
    with host_clock_at(case.now):
        check_explain(site, case, helper)
        check_test(site, case, helper, users, domains, broken)
        check_who(site, case, helper, users, broken)
        check_list(site, case, helper, domains, broken)


def check_explain(site: Site, case: Case, helper: Helper) -> None:
    """``explain``: the decision, its confirm= and its deciding rule (the audit's ``rule``)."""
    decision = helper.decide(helper.caller(case.user), case.action, case.domain)
    code, out = admin(site, case, "explain", case.user, case.action, case.domain)
    lines = out.splitlines()
    verdict = "ALLOW" if decision.allowed else "DENY"
    assert lines[0] == f"{verdict}: {case.user} {case.action} {case.domain}"
    assert code == (0 if decision.allowed else 1)
    confirm = [line for line in lines if line.startswith("confirm: ")]
    assert confirm == ([f"confirm: {decision.confirm}"] if decision.confirm else [])
    deciding = [line.split(": ", 1)[0][2:] for line in lines if line.startswith("* ")]
    assert deciding == ([decision.deciding.location] if decision.deciding else [])
    noted = any(line.startswith("note: console implies watch") for line in lines)
    assert noted == (decision.implied_by == "console")


def check_test(
    site: Site,
    case: Case,
    helper: Helper,
    users: list[str],
    domains: tuple[str, ...],
    broken: bool,
) -> None:
    """``test``: every user (and any member of each group) on every action and domain,
    expecting what the helper decided."""
    callers = [(helper.caller(user), "") for user in users]
    callers += [(group_caller(helper, group), f" groups={group}") for group in GROUPS]
    expectations = []
    for caller, groups in callers:
        for action in ACTIONS:
            for domain in domains:
                allowed = helper.decide(caller, action, domain).allowed
                verdict = "allow" if allowed else "deny"
                expectations.append(f"{verdict} {caller.user} {action} {domain}{groups}")
    assertions = site.root / "expected.test"
    assertions.write_text("".join(line + "\n" for line in expectations))
    code, out = admin(site, case, "test", str(assertions))
    assert out.splitlines()[-1] == f"{len(expectations)} assertion(s), 0 failed", out
    assert code == (1 if broken else 0)


def check_who(site: Site, case: Case, helper: Helper, users: list[str], broken: bool) -> None:
    """``who DOMAIN``: who may do which action, with confirm=."""
    code, out = admin(site, case, "who", case.domain, "--json")
    assert code == (1 if broken else 0)
    shown = rows_by(json.loads(out)["access"], "who")
    expected = {user: helper.allowed(helper.caller(user), case.domain) for user in users}
    for group in GROUPS:
        expected[f"group:{group}"] = helper.allowed(group_caller(helper, group), case.domain)
    assert shown == {who: actions for who, actions in expected.items() if actions}


def check_list(
    site: Site, case: Case, helper: Helper, domains: tuple[str, ...], broken: bool
) -> None:
    """``list USER``: what the user may do where, and the domains the tenant's list shows."""
    code, out = admin(site, case, "list", case.user, "--json")
    assert code == (1 if broken else 0)
    shown = rows_by(json.loads(out)["access"], "domain")
    caller = helper.caller(case.user)
    expected = {domain: helper.allowed(caller, domain) for domain in domains}
    assert shown == {domain: actions for domain, actions in expected.items() if actions}
    listed = {domain for domain, actions in shown.items() if "status" in actions}
    assert helper.visible(caller, domains) == listed


def test_the_generated_cases_meet_console_implying_watch() -> None:
    """The property above is only as good as its cases: many must allow a watch through a
    console grant alone, and some must deny a watch beside an allowed console."""
    implied = denied_beside_console = 0

    @settings(max_examples=120, deadline=None, derandomize=True, database=None)
    @given(case=cases())
    def count(case: Case) -> None:
        nonlocal implied, denied_beside_console
        policy = Policy.from_texts(case.files)
        seen = set()
        for user, groups in case.members.items():
            for domain in ASKED_DOMAINS:
                watch = policy.decide(user, groups, "watch", domain, case.now)
                console = policy.decide(user, groups, "console", domain, case.now)
                if watch.implied_by == "console":
                    seen.add("implied")
                if console.allowed and not watch.allowed:
                    seen.add("denied beside console")
        implied += "implied" in seen
        denied_beside_console += "denied beside console" in seen

    count()
    assert implied >= 30
    assert denied_beside_console >= 5
