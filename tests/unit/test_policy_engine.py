"""Policy decisions: default deny, deny wins, groups, expiry, implied status, broken policies."""

from __future__ import annotations

import datetime as dt

import pytest

from vpsshell.policy import ACTIONS, Decision, Policy, parse_policy

NOON = dt.datetime(2026, 6, 1, 12, 0)


def decide(
    policy: Policy, user: str, action: str, domain: str, groups: tuple[str, ...] = ()
) -> Decision:
    return policy.decide(user, groups, action, domain, now=NOON)


def test_default_deny() -> None:
    policy = parse_policy("allow user:alice start web1\n")
    for user, action, domain in [
        ("bob", "start", "web1"),
        ("alice", "reboot", "web1"),
        ("alice", "start", "web2"),
    ]:
        decision = decide(policy, user, action, domain)
        assert not decision.allowed
        assert decision.reason == "no rule grants this"
        assert decision.deciding is None and decision.matches == []
        assert not decision.broken


def test_allow_grants_exactly_the_listed_actions_and_domains() -> None:
    policy = parse_policy("allow user:alice @operator web1,web2\n", "p.policy")
    decision = decide(policy, "alice", "start", "web2")
    assert decision.allowed
    assert decision.deciding is policy.rules[0]
    assert decision.reason is None
    assert (decision.user, decision.action, decision.domain) == ("alice", "start", "web2")
    assert decide(policy, "alice", "poweroff", "web1").allowed
    assert decide(policy, "alice", "reset", "web1").allowed
    assert not decide(policy, "alice", "sysrq", "web1").allowed
    assert not decide(policy, "alice", "start", "web3").allowed


@pytest.mark.parametrize(
    "files",
    [
        {
            "10-a.policy": "allow user:alice * web1\n",
            "20-b.policy": "deny user:alice reboot web1\n",
        },
        {
            "10-a.policy": "deny user:alice reboot web1\n",
            "20-b.policy": "allow user:alice * web1\n",
        },
        {"10-a.policy": "deny user:alice reboot web1\nallow user:alice * web1\n"},
        {"10-a.policy": "allow user:alice * web1\ndeny user:alice reboot web1\n"},
    ],
)
def test_deny_beats_allow_whatever_the_order(files: dict[str, str]) -> None:
    policy = Policy.from_texts(files)
    assert policy.errors == []
    denied = decide(policy, "alice", "reboot", "web1")
    assert not denied.allowed
    assert denied.deciding is not None and denied.deciding.effect == "deny"
    assert denied.reason == "denied by policy"
    assert len(denied.matches) == 2
    assert decide(policy, "alice", "start", "web1").allowed


def test_group_grant_and_group_deny() -> None:
    policy = parse_policy(
        "allow group:acme @operator acme-web\ndeny group:suspended * * reason=unpaid\n"
    )
    assert decide(policy, "dave", "start", "acme-web", ("staff", "acme")).allowed
    assert not decide(policy, "dave", "start", "acme-web", ("staff",)).allowed
    # a user does not match a group rule by having the group's name
    assert not decide(policy, "acme", "start", "acme-web").allowed
    suspended = decide(policy, "dave", "start", "acme-web", ("acme", "suspended"))
    assert not suspended.allowed
    assert suspended.reason == "unpaid"


def test_user_rule_does_not_match_a_group_of_the_same_name() -> None:
    policy = parse_policy("allow user:ops start web1\n")
    assert not decide(policy, "eve", "start", "web1", ("ops",)).allowed


def test_groups_as_a_string_is_a_programming_error() -> None:
    policy = parse_policy("allow group:a start web1\n")
    with pytest.raises(TypeError):
        policy.decide("bob", "abc", "start", "web1")  # would otherwise match group "a"


@pytest.mark.parametrize(
    ("now", "active"),
    [
        (dt.datetime(2026, 12, 31, 0, 0), True),
        (dt.datetime(2026, 12, 31, 23, 59, 59, 999999), True),
        (dt.datetime(2027, 1, 1, 0, 0), False),
        (dt.datetime(2030, 5, 5, 12, 0), False),
    ],
)
def test_expiry_ends_at_end_of_day(now: dt.datetime, active: bool) -> None:
    policy = parse_policy(
        "allow user:bob console acme-db expires=2026-12-31\n"
        "deny user:bob status web9 expires=2026-12-31\n"
        "allow user:bob status web9\n"
    )
    assert policy.decide("bob", [], "console", "acme-db", now=now).allowed is active
    # an expired deny stops matching too
    assert policy.decide("bob", [], "status", "web9", now=now).allowed is not active
    # expired rules are not listed as matches
    listed = policy.decide("bob", [], "status", "acme-db", now=now).matches
    assert len(listed) == (1 if active else 0)


def test_expiry_uses_host_local_date_of_aware_datetimes() -> None:
    policy = parse_policy("allow user:bob start web1 expires=2026-12-31\n")
    local = dt.datetime(2026, 12, 31, 23, 0).astimezone()  # aware, host zone
    assert policy.decide("bob", [], "start", "web1", now=local).allowed
    later = (local + dt.timedelta(hours=2)).astimezone(dt.UTC)
    assert not policy.decide("bob", [], "start", "web1", now=later).allowed


def test_any_grant_implies_status() -> None:
    policy = parse_policy("allow user:carol poweroff web3 confirm=password\n")
    status = decide(policy, "carol", "status", "web3")
    assert status.allowed
    assert status.matches == [policy.rules[0]]
    # the confirm= of the poweroff grant does not make looking at the domain need a password
    assert status.confirm is None
    assert not decide(policy, "carol", "start", "web3").allowed


@pytest.mark.parametrize(
    "deny", ["deny user:x * *", "deny user:x status web1", "deny user:x @viewer *"]
)
def test_deny_covering_status_beats_implied_status(deny: str) -> None:
    policy = parse_policy(f"allow user:x start web1\n{deny}\n")
    assert not decide(policy, "x", "status", "web1").allowed
    assert policy.visible_domains("x", [], ["web1"], now=NOON) == set()


def test_deny_of_another_action_keeps_implied_status() -> None:
    policy = parse_policy("allow user:x start web1\ndeny user:x start web1\n")
    assert not decide(policy, "x", "start", "web1").allowed
    assert decide(policy, "x", "status", "web1").allowed


def test_confirm_is_the_strongest_among_matching_allows() -> None:
    policy = Policy.from_texts(
        {
            "10-a.policy": "allow user:carol poweroff web3\n",
            "20-b.policy": "allow group:ops poweroff,reset web3 confirm=password\n",
        }
    )
    assert decide(policy, "carol", "poweroff", "web3").confirm is None
    both = decide(policy, "carol", "poweroff", "web3", ("ops",))
    assert both.allowed and both.confirm == "password"
    assert both.deciding is not None and both.deciding.location == "10-a.policy:1"


def test_unknown_action_is_denied_not_raised() -> None:
    policy = parse_policy("allow user:a * web1\n")
    decision = decide(policy, "a", "format-disk", "web1")
    assert not decision.allowed
    assert decision.reason is not None and "unknown action" in decision.reason


def test_broken_policy_denies_everything() -> None:
    policy = Policy.from_texts(
        {
            "10-ok.policy": "allow user:alice * web1\n",
            "20-bad.policy": "\n\nallow user:alice start *\nallow user:bob stop web2\n",
        }
    )
    assert [str(e) for e in policy.errors][0].startswith("20-bad.policy:3: ")
    assert policy.broken
    for action in ACTIONS:
        decision = decide(policy, "alice", action, "web1")
        assert not decision.allowed
        assert decision.broken
        assert decision.deciding is None
        assert decision.reason == f"policy is broken: {policy.errors[0]}"
    assert policy.visible_domains("alice", [], ["web1"], now=NOON) == set()


def test_empty_policy_is_valid_and_denies() -> None:
    policy = parse_policy("# nothing yet\n")
    assert policy.errors == [] and not policy.broken
    assert not decide(policy, "a", "status", "web1").allowed


def test_visible_domains() -> None:
    policy = parse_policy(
        "domains @acme = acme-web acme-db\n"
        "allow group:acme @viewer @acme\n"
        "allow user:alice start web1\n"
        "allow user:alice console web2\n"
        "deny user:alice status web2\n"
        "allow user:alice start old expires=2020-01-01\n"
    )
    candidates = ["web1", "web2", "web3", "acme-web", "acme-db", "old"]
    assert policy.visible_domains("alice", [], candidates, now=NOON) == {"web1"}
    assert policy.visible_domains("alice", ["acme"], candidates, now=NOON) == {
        "web1",
        "acme-web",
        "acme-db",
    }
    assert policy.visible_domains("nobody", [], candidates, now=NOON) == set()


def test_explain_lists_every_matching_rule_with_locations() -> None:
    policy = Policy.from_texts(
        {
            "10-a.policy": "allow user:alice @operator web1\nallow user:bob start web1\n",
            "20-b.policy": "# staff\nallow group:staff reboot web1,web2\n"
            "deny group:staff reboot web1 reason=frozen\n"
            "allow group:staff reboot web1 expires=2000-01-01\n",
        }
    )
    explained = policy.explain("alice", ["staff"], "reboot", "web1", now=NOON)
    assert explained == policy.decide("alice", ["staff"], "reboot", "web1", now=NOON)
    assert explained.locations == ["10-a.policy:1", "20-b.policy:2", "20-b.policy:3"]
    assert explained.deciding is not None and explained.deciding.location == "20-b.policy:3"
    assert explained.reason == "frozen"
    assert explained.to_dict()["rule"] == "20-b.policy:3"
    allowed = policy.explain("alice", ["staff"], "reboot", "web2", now=NOON)
    assert allowed.allowed
    assert allowed.locations == ["20-b.policy:2"]
    assert allowed.deciding is not None and allowed.deciding.location == "20-b.policy:2"


def test_example_scenarios() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "policy" / "example.policy"
    policy = parse_policy(example.read_text(), "example.policy")
    assert decide(policy, "alice", "start", "web1").allowed
    assert decide(policy, "alice", "poweroff", "web1").allowed  # @operator includes it
    assert not decide(policy, "alice", "sysrq", "web1").allowed
    assert decide(policy, "dave", "console", "acme-db", ("acme",)).allowed
    carol = decide(policy, "carol", "poweroff", "web3")
    assert carol.allowed and carol.confirm == "password"
    mallory = decide(policy, "mallory", "status", "acme-web", ("acme",))
    assert not mallory.allowed and mallory.reason == "suspended"
    assert policy.decide("bob", [], "console", "acme-db", now=dt.datetime(2026, 12, 31, 23)).allowed
    assert not policy.decide("bob", [], "console", "acme-db", now=dt.datetime(2027, 1, 1)).allowed
