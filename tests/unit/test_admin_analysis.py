"""The admin tools' reasoning about a policy: effective access, diffs, strict warnings, tests."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from vpsshell.admin import access, lint
from vpsshell.admin.assertions import describe_failure, evaluate, parse_assertions
from vpsshell.admin.identities import StaticIdentities
from vpsshell.policy import Policy

NOW = dt.datetime(2026, 6, 1, 12, 0)
PEOPLE = StaticIdentities(
    {
        "alice": ["alice"],
        "bob": ["bob"],
        "carol": ["carol", "acme"],
        "mallory": ["mallory", "acme"],
    }
)
BASE = """\
domains @acme = acme-web acme-db
allow user:alice   @operator web1
allow group:acme   @viewer   @acme
deny  user:mallory *         *   reason="suspended"
"""


def policy(*texts: str) -> Policy:
    loaded = Policy.from_texts({f"{i:02d}-x.policy": t for i, t in enumerate(texts)})
    assert not loaded.errors, loaded.errors
    return loaded


def lines(old: Policy, new: Policy) -> list[str]:
    return access.format_diff(*access.access_diff(old, new, PEOPLE, NOW))


def test_principals_are_named_users_group_members_and_groups() -> None:
    found = [p.label for p in access.principals([policy(BASE)], PEOPLE)]
    assert found == ["alice", "carol", "mallory", "group:acme"]


def test_effective_access_follows_deny_wins_and_implied_status_and_watch() -> None:
    pol = policy(BASE, "allow user:bob console web2\n")
    carol = access.user_principal("carol", PEOPLE)
    mallory = access.user_principal("mallory", PEOPLE)
    bob = access.user_principal("bob", PEOPLE)
    assert {(a.action, a.domain) for a in access.effective_access(pol, carol, NOW)} == {
        (action, domain)
        for action in ("status", "log", "watch", "events")
        for domain in ("acme-web", "acme-db")
    }
    assert access.effective_access(pol, mallory, NOW) == set()  # group grant, personal deny
    # console implies watch, as the helper decides it
    assert {a.action for a in access.effective_access(pol, bob, NOW)} == {
        "console",
        "status",
        "watch",
    }


def test_diff_of_a_grant_shows_user_action_domain_lines() -> None:
    old = policy(BASE)
    new = policy(BASE, "allow user:bob start,reboot web2\n")
    assert lines(old, new) == [
        "changes in who may do what (+ now allowed, - no longer allowed):",
        "+ bob status,start,reboot web2",
    ]


def test_diff_of_a_group_grant_names_members_and_the_group() -> None:
    old = policy(BASE)
    new = policy(BASE, "allow group:acme reboot acme-web\n")
    assert lines(old, new) == [
        "changes in who may do what (+ now allowed, - no longer allowed):",
        "+ carol reboot acme-web",
        "+ group:acme reboot acme-web",
        "(group:NAME: any member of that group)",
    ]


def test_diff_of_a_deny_and_of_nothing() -> None:
    old = policy(BASE)
    new = policy(BASE, "deny user:alice reboot,poweroff web1\n")
    assert lines(old, new)[1:] == ["- alice reboot,poweroff web1"]
    assert lines(old, old) == ["no change in who may do what"]


def test_diff_shows_a_new_confirmation_requirement() -> None:
    old = policy(BASE)
    new = policy(BASE, "allow user:alice poweroff web1 confirm=password\n")
    assert lines(old, new)[1:] == [
        "+ alice poweroff web1 (confirm=password)",
        "- alice poweroff web1",
    ]


_STATEMENTS = [
    "allow user:alice @operator web1",
    "allow user:alice console web2 expires=2026-05-31",
    "allow user:bob log,watch web1,web2",
    "allow user:bob poweroff web3 confirm=password",
    "allow group:acme @viewer @acme",
    "allow group:acme reboot acme-web",
    "deny group:acme console acme-db",
    "deny user:mallory * * reason=suspended",
    "deny user:carol log *",
    "allow user:carol start acme-db,web1",
    "allow user:nobody status web9",
]


@settings(max_examples=150, deadline=None)
@given(
    old=st.lists(st.sampled_from(_STATEMENTS), max_size=7),
    new=st.lists(st.sampled_from(_STATEMENTS), max_size=7),
)
def test_diff_looks_only_where_a_change_matters_and_misses_nothing(
    old: list[str], new: list[str]
) -> None:
    sets = "domains @acme = acme-web acme-db\n"
    before = policy(sets + "".join(line + "\n" for line in old))
    after = policy(sets + "".join(line + "\n" for line in reversed(new)))
    everyone_before: set[access.Access] = set()
    everyone_after: set[access.Access] = set()
    for person in access.principals([before, after], PEOPLE):
        everyone_before |= access.effective_access(before, person, NOW)
        everyone_after |= access.effective_access(after, person, NOW)
    added, removed = access.access_diff(before, after, PEOPLE, NOW)
    assert set(added) == everyone_after - everyone_before
    assert set(removed) == everyone_before - everyone_after


def test_broken_policy_grants_nothing() -> None:
    broken = Policy.from_texts({"10-x.policy": BASE + "allow user:bob @operatr web1\n"})
    assert broken.errors
    alice = access.user_principal("alice", PEOPLE)
    assert access.effective_access(broken, alice, NOW) == set()


def test_strict_finds_expired_rules() -> None:
    pol = policy(BASE + "allow user:bob status web3 expires=2020-01-01\n")
    findings = lint.dead_rules(pol, NOW.date())
    assert [str(f) for f in findings] == [
        "00-x.policy:5: warning: expired on 2020-01-01: this rule never matches"
    ]


def test_strict_finds_allows_shadowed_by_a_deny_for_the_same_subject() -> None:
    text = (
        "allow user:bob start,reboot web1,web2\n"
        "deny  user:bob *            web1\n"
        "deny  user:bob @all         web2\n"
        "allow user:bob start        web3\n"
        "deny  user:bob start        web3\n"  # status on web3 is still implied: not dead
        "allow user:bob reboot       web4 expires=2030-01-01\n"
        "deny  user:bob reboot,status web4 expires=2029-01-01\n"  # ends first: not dead
    )
    findings = lint.dead_rules(policy(text), NOW.date())
    assert [str(f) for f in findings] == [
        "00-x.policy:1: warning: never takes effect: user:bob is denied by "
        "00-x.policy:2, 00-x.policy:3"
    ]


def test_strict_finds_unknown_subjects() -> None:
    pol = policy("allow user:nobody-here status web1\nallow group:acme status web1\n")
    found = [str(f) for f in lint.unknown_subjects(pol, PEOPLE)]
    assert found == [
        "00-x.policy:1: warning: no such user 'nobody-here' (NSS); this rule matches nobody"
    ]


def test_strict_finds_unused_sets_through_nesting() -> None:
    texts = {
        "10-sets.policy": (
            "actions @used = status\n"
            "actions @inner = log\n"
            "actions @outer = @inner watch\n"
            "domains @lonely = web9\n"
            "actions @nested_unused = @inner\n"
        ),
        "20-rules.policy": "allow user:alice @used,@outer web1  # @lonely in a comment\n",
    }
    found = [str(f) for f in lint.unused_sets(texts)]
    assert found == [
        "10-sets.policy:4: warning: set @lonely is never used by a rule",
        "10-sets.policy:5: warning: set @nested_unused is never used by a rule",
    ]


def test_strict_findings_are_sorted_and_clean_policy_has_none() -> None:
    texts = {"10-x.policy": "allow user:alice status web1\n"}
    assert lint.strict_findings(Policy.from_texts(texts), texts, PEOPLE, NOW.date()) == []


def test_assertion_file_parsing_and_errors() -> None:
    text = (
        "# expectations\n"
        "allow alice start web1\n"
        "\n"
        "deny  mallory status acme-web   # suspended\n"
        "allow carol log acme-db groups=acme\n"
        "allow alice fly web1\n"
        "maybe alice start web1\n"
    )
    assertions, problems = parse_assertions(text, "t.txt")
    assert [(a.line, a.user, a.action) for a in assertions] == [
        (2, "alice", "start"),
        (4, "mallory", "status"),
        (5, "carol", "log"),
    ]
    assert assertions[2].groups == ("acme",)
    assert [str(p).split(":", 2)[:2] for p in problems] == [["t.txt", "6"], ["t.txt", "7"]]


def test_assertions_are_evaluated_with_nss_or_given_groups() -> None:
    assertions, _ = parse_assertions(
        "allow alice start web1\n"
        "allow dave log acme-db groups=acme\n"
        "allow dave log acme-db\n"
        "deny mallory status acme-web\n"
        "allow alice start web2\n",
        "t.txt",
    )
    outcomes = evaluate(policy(BASE), assertions, PEOPLE, NOW)
    assert [o.passed for o in outcomes] == [True, True, False, True, False]
    assert describe_failure(outcomes[4]) == (
        "t.txt:5: expected allow, got deny: alice start web2 (no rule grants this)"
    )
    assert "dave is not a known user" in describe_failure(outcomes[2])
