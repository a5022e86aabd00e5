"""Policy decisions: default deny, deny wins, groups, expiry, implied status and watch, broken
policies."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpsshell.policy import ACTIONS, Decision, Policy, Rule, parse_policy

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


def test_console_implies_watch_with_the_console_rules_and_confirm() -> None:
    policy = Policy.from_texts(
        {
            "10-a.policy": "allow user:alice console web1\n",
            "20-b.policy": "allow group:ops console web1 confirm=password\n",
        }
    )
    watch = decide(policy, "alice", "watch", "web1")
    assert watch.allowed and watch.implied_by == "console"
    assert (watch.action, watch.reason, watch.confirm) == ("watch", None, None)
    assert watch.locations == ["10-a.policy:1"]
    assert watch.deciding is policy.rules[0]
    assert watch.to_dict()["implied_by"] == "console"
    # the console's confirm= guards the watch it implies, as it guards the console
    both = decide(policy, "alice", "watch", "web1", ("ops",))
    assert both.allowed and both.confirm == "password"
    assert both.locations == ["10-a.policy:1", "20-b.policy:1"]
    assert not decide(policy, "alice", "watch", "web2").allowed
    assert not decide(policy, "bob", "watch", "web1").allowed


def test_a_rule_naming_watch_decides_watch_alone() -> None:
    policy = parse_policy(
        "allow user:alice console web1 confirm=password\n"
        "allow user:alice watch web1\n"  # watching needs no password, the console does
        "allow user:bob console web1,web2\n"
        "deny user:bob watch web1\n"
        "deny group:nowatch watch *\n",
        "p.policy",
    )
    alice = decide(policy, "alice", "watch", "web1")
    assert alice.allowed and alice.implied_by is None and alice.confirm is None
    assert alice.locations == ["p.policy:2"]
    bob = decide(policy, "bob", "watch", "web1")
    assert not bob.allowed and bob.implied_by is None
    assert bob.deciding is not None and bob.deciding.location == "p.policy:4"
    assert decide(policy, "bob", "console", "web1").allowed
    assert decide(policy, "bob", "watch", "web2").implied_by == "console"
    assert not decide(policy, "bob", "watch", "web2", ("nowatch",)).allowed


def test_watch_is_not_implied_by_a_console_that_is_denied_or_expired() -> None:
    policy = parse_policy(
        "allow user:alice console web1\n"
        "deny user:alice console web1\n"
        "allow user:bob console web1 expires=2026-05-31\n"
    )
    alice = decide(policy, "alice", "watch", "web1")
    assert not alice.allowed and alice.reason == "no rule grants this" and alice.matches == []
    assert not decide(policy, "bob", "watch", "web1").allowed
    assert policy.decide("bob", [], "watch", "web1", now=dt.datetime(2026, 5, 31, 23, 59)).allowed


def test_only_console_implies_watch() -> None:
    for grant in ("@operator", "start,reboot,sysrq", "log,events"):
        policy = parse_policy(f"allow user:x {grant} web1\n")
        implied = decide(policy, "x", "watch", "web1")
        assert implied.implied_by is None
        assert implied.allowed == (grant == "@operator")  # @operator names watch itself
    for action in ACTIONS:
        if action != "watch":
            policy = parse_policy("allow user:x console web1\n")
            assert decide(policy, "x", action, "web1").allowed == (action in ("console", "status"))


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


# -- the index: decisions equal those of a scan of every rule ---------------------------------

_USERS = ["u0", "u1", "u2"]
_GROUPS = ["g0", "g1", "g2"]
#: u0 and g0 get most rules, so that they often have enough to be indexed by domain
_SUBJECTS = [("user", "u0")] * 3 + [("group", "g0")] * 3 + [("user", "u1"), ("group", "g1")]
_DOMAINS = [f"d{i}" for i in range(14)]
_BIG = frozenset(_DOMAINS[:10])  # larger than the index's "few domains": indexed by set


def _scan(policy: Policy, user: str, groups: frozenset[str], action: str, domain: str) -> Decision:
    """What a decision was before the index: every rule of the policy, looked at in order."""
    rules = [r for r in policy.rules if r.applies_to(user, groups) and r.active_on(NOON.date())]
    return Policy._evaluate(rules, user, action, domain)


@st.composite
def _rules(draw: st.DrawFn) -> list[Rule]:
    # a few shared domain sets, one of them also as an equal but distinct object
    shared = [_BIG, frozenset(set(_BIG)), frozenset(_DOMAINS[4:13]), frozenset(_DOMAINS[:2])]
    rules = []
    for line in range(1, draw(st.integers(0, 60)) + 1):
        effect = draw(st.sampled_from(["allow", "deny"]))
        kind, name = draw(st.sampled_from(_SUBJECTS))
        domains: frozenset[str] | None = draw(
            st.one_of(
                st.sampled_from(shared),
                st.frozensets(st.sampled_from(_DOMAINS), min_size=1, max_size=12),
                st.just(None),  # "*" (a deny in policy text; the engine does not care)
            )
        )
        actions = draw(st.frozensets(st.sampled_from(ACTIONS), min_size=1))
        expires = draw(st.sampled_from([None, dt.date(2026, 5, 31), dt.date(2026, 6, 1)]))
        confirm = draw(st.sampled_from([None, "password"])) if effect == "allow" else None
        rules.append(
            Rule("p.policy", line, effect, kind, name, actions, domains, expires, None, confirm)
        )
    return rules


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    rules=_rules(),
    user=st.sampled_from(_USERS),
    groups=st.frozensets(st.sampled_from(_GROUPS)),
    action=st.sampled_from(ACTIONS),
    domain=st.sampled_from([*_DOMAINS, "other"]),
)
def test_indexed_decisions_equal_a_scan_of_every_rule(
    rules: list[Rule], user: str, groups: frozenset[str], action: str, domain: str
) -> None:
    policy = Policy(rules)
    assert policy.decide(user, groups, action, domain, now=NOON) == _scan(
        policy, user, groups, action, domain
    )
    candidates = [*_DOMAINS, "other"]
    expected = {d for d in candidates if _scan(policy, user, groups, "status", d).allowed}
    assert policy.visible_domains(user, groups, candidates, now=NOON) == expected
    active = [r for r in rules if r.applies_to(user, groups) and r.active_on(NOON.date())]
    assert policy.rules_for(user, groups, now=NOON) == active


def test_a_subject_with_many_rules_on_shared_sets_decides_like_a_scan() -> None:
    racks = "".join(
        f"domains @rack{r} = " + " ".join(f"r{r}-d{i}" for i in range(20)) + "\n" for r in range(30)
    )
    rules = "".join(f"allow group:support @viewer @rack{r}\n" for r in range(30))
    rules += "".join(f"allow group:noc start,reboot @rack{r}\n" for r in range(0, 30, 2))
    rules += 'deny group:support console,log @rack3 reason="NOC only"\n'
    rules += "".join(f"allow user:ops{i % 3} console r{i}-d{i} r{i}-d1\n" for i in range(30))
    policy = parse_policy(racks + rules)
    assert policy.errors == []
    everything = [f"r{r}-d{i}" for r in range(31) for i in range(21)]
    for user, groups in [("sam", {"support"}), ("ops1", {"noc", "support"}), ("x", set())]:
        for domain in everything[::7]:
            for action in ("status", "log", "console", "start"):
                assert policy.decide(user, groups, action, domain, now=NOON) == _scan(
                    policy, user, frozenset(groups), action, domain
                )
        visible = policy.visible_domains(user, groups, everything, now=NOON)
        assert visible == {
            d for d in everything if _scan(policy, user, frozenset(groups), "status", d).allowed
        }
    assert len(policy.visible_domains("sam", ["support"], everything, now=NOON)) == 600
    denied = policy.decide("sam", ["support"], "log", "r3-d5", now=NOON)
    assert not denied.allowed and denied.reason == "NOC only"


def test_equal_domain_sets_of_different_subjects_match_once() -> None:
    # Rules built elsewhere may hold equal sets as distinct objects; each rule still matches once.
    racks = [frozenset(f"r{r}-d{i}" for i in range(12)) for r in range(4)]
    copy = frozenset(set(racks[0]))
    rules = [
        Rule("p", line, "allow", kind, name, frozenset({"status"}), domains)
        for line, (kind, name, domains) in enumerate(
            [("user", "u0", rack) for rack in racks] * 5
            + [("group", "g0", copy)]
            + [("group", "g0", rack) for rack in racks[1:]] * 6,
            start=1,
        )
    ]
    policy = Policy(rules)
    decision = policy.decide("u0", ["g0"], "status", "r0-d3", now=NOON)
    assert decision == _scan(policy, "u0", frozenset({"g0"}), "status", "r0-d3")
    assert [r.line for r in decision.matches] == [1, 5, 9, 13, 17, 21]
