"""Policy grammar: statements, sets, options, and errors located at file:line."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpsshell.policy import ACTIONS, Policy, PolicyError, Rule, parse_policy
from vpsshell.policy import parser as policy_parser
from vpsshell.policy.model import (
    MAX_EXPANSION_WORK,
    MAX_FILE_BYTES,
    MAX_LINE_CHARS,
    MAX_RULES,
    MAX_SET_DEPTH,
    MAX_SET_MEMBERS,
    MAX_SETS,
    MAX_TOTAL_BYTES,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policy" / "example.policy"


def errors_of(text: str, filename: str = "t.policy") -> list[str]:
    return [str(e) for e in parse_policy(text, filename).errors]


def only_rule(text: str) -> Rule:
    policy = parse_policy(text, "t.policy")
    assert policy.errors == []
    assert len(policy.rules) == 1
    return policy.rules[0]


def test_actions_tuple_is_the_closed_list() -> None:
    assert ACTIONS == (
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


def test_example_policy_parses_without_errors() -> None:
    policy = parse_policy(EXAMPLE.read_text(), EXAMPLE.name)
    assert policy.errors == []
    assert policy.action_sets == {"support": frozenset({"status", "log", "watch"})}
    assert policy.domain_sets == {"acme": frozenset({"acme-web", "acme-db"})}
    assert [r.subject for r in policy.rules] == [
        "user:alice",
        "group:acme",
        "user:bob",
        "user:carol",
        "user:mallory",
    ]
    alice = policy.rules[0]
    assert alice.domains == frozenset({"web1", "web2"})
    assert alice.actions == frozenset(
        {"status", "log", "watch", "events", "start", "shutdown", "reboot", "poweroff", "reset"}
        | {"console"}
    )
    mallory = policy.rules[-1]
    assert (mallory.effect, mallory.domains, mallory.reason) == ("deny", None, "suspended")
    assert mallory.actions == frozenset(ACTIONS) | {"keys"}  # * is every action, keys too
    assert policy.rules[2].expires == dt.date(2026, 12, 31)
    assert policy.rules[3].confirm == "password"


def test_rule_fields_and_location() -> None:
    rule = only_rule('\n\ndeny group:staff start,reboot web1,web2 db1 reason="maint window"\n')
    assert rule.location == "t.policy:3"
    assert (rule.effect, rule.subject_kind, rule.subject_name) == ("deny", "group", "staff")
    assert rule.actions == frozenset({"start", "reboot"})
    assert rule.domains == frozenset({"web1", "web2", "db1"})
    assert rule.reason == "maint window"


def test_to_text_round_trips() -> None:
    text = 'deny user:bob start,@viewer web1,web2 expires=2030-01-02 reason="a b c"'
    rule = only_rule(text)
    assert rule.to_text() == (
        'deny user:bob status,start,watch,log,events web1,web2 expires=2030-01-02 reason="a b c"'
    )
    again = only_rule(rule.to_text())
    assert again == rule
    star = only_rule("deny user:x * *")
    assert star.to_text() == "deny user:x * *"


def test_sets_resolve_across_files_in_any_order() -> None:
    policy = Policy.from_texts(
        {
            "10-rules.policy": "allow group:acme @ops @acme\n",
            "20-sets.policy": (
                "actions @ops = @restart console\n"
                "actions @restart = start,shutdown reboot\n"
                "domains @acme = @acme-web acme-db\n"
                "domains @acme-web=web1 web2\n"
            ),
        }
    )
    assert policy.errors == []
    assert policy.action_sets["ops"] == frozenset({"start", "shutdown", "reboot", "console"})
    assert policy.domain_sets["acme"] == frozenset({"web1", "web2", "acme-db"})
    assert policy.rules[0].domains == frozenset({"web1", "web2", "acme-db"})
    assert policy.files == ["10-rules.policy", "20-sets.policy"]


def test_comments_blank_lines_and_continuations() -> None:
    text = (
        "# a comment\n"
        "\n"
        "   # indented comment\n"
        "allow user:alice \\\n"
        "      start web1 # trailing comment\n"
        "allow user:bob start web#2\n"
    )
    policy = parse_policy(text, "t.policy")
    # '#' starts a comment only at the start of a token
    assert [str(e) for e in policy.errors][0].startswith("t.policy:6: bad domain name 'web#2'")
    text = text.replace("web#2", "web2")
    policy = parse_policy(text, "t.policy")
    assert policy.errors == []
    assert [r.location for r in policy.rules] == ["t.policy:4", "t.policy:6"]
    assert policy.rules[0].domains == frozenset({"web1"})


def test_commented_line_with_backslash_does_not_swallow_next_line() -> None:
    policy = parse_policy("# old rule \\\ndeny user:x * *\n", "t.policy")
    assert policy.errors == []
    assert len(policy.rules) == 1


def test_hash_inside_quoted_reason_is_not_a_comment() -> None:
    rule = only_rule('deny user:x * * reason="ticket #42"')
    assert rule.reason == "ticket #42"


def test_error_in_continued_line_reports_first_line() -> None:
    assert errors_of("\nallow user:a \\\n start \\\n  bogus!name\n") == [
        "t.policy:2: bad domain name 'bogus!name' "
        "(letters, digits and _ . : - , starting with a letter or digit, at most 64)"
    ]


def test_continuation_at_end_of_file_is_an_error() -> None:
    assert errors_of("allow user:a start web1 \\\n") == [
        "t.policy:1: line continues past the end of the file"
    ]


def test_star_domains_in_allow_rejected_with_location() -> None:
    errs = errors_of("allow user:a start web1\nallow user:alice status *\n", "10-x.policy")
    assert len(errs) == 1
    assert errs[0].startswith("10-x.policy:2: '*' in DOMAINS is only allowed in deny rules")


def test_star_actions_means_every_action() -> None:
    rule = only_rule("allow user:a * web1")
    assert rule.actions == frozenset(ACTIONS) | {"keys"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("permit user:a start web1", "unknown statement 'permit'"),
        ("allow user:a start", "expected 'allow SUBJECT ACTIONS DOMAINS"),
        ("allow alice start web1", "bad subject 'alice'"),
        ("allow role:a start web1", "bad subject 'role:a'"),
        ("allow user:a/b start web1", "bad subject 'user:a/b'"),
        ("allow user: start web1", "bad subject 'user:'"),
        ("allow user:a stop web1", "unknown action 'stop'"),
        ("allow user:a Start web1", "unknown action 'Start'"),
        ("allow user:a start,,reboot web1", "empty item in list"),
        ("allow user:a start, reboot web1", "empty item in list"),
        ("allow user:a start -web1", "bad domain name '-web1'"),
        ("allow user:a start " + "w" * 65, "bad domain name"),
        ("allow user:a start web1 color=red", "unknown option 'color'"),
        ("allow user:a start web1 expires=2026-1-1", "bad date '2026-1-1'"),
        ("allow user:a start web1 expires=2026-02-30", "bad date '2026-02-30'"),
        ("allow user:a start web1 expires=2026-01-01 expires=2027-01-01", "given twice"),
        ("allow user:a start web1 confirm=yes", "bad confirm= value 'yes'"),
        ("deny user:a start web1 confirm=password", "confirm= only applies to allow rules"),
        ('deny user:a start web1 reason="unclosed', "unterminated quote"),
        ('deny user:a start web1 reason=""', "empty reason="),
        ('deny user:a start web1 reason="x"y', "expected a space after the closing quote"),
        ('deny user:a start "web1"', "unexpected '\"'"),
        ("deny user:a start web1 reason=x web2", "after options"),
        ("deny user:a start reason=x", "missing DOMAINS"),
        ("actions @x start", "expected '=' after the set name"),
        ("actions x = start", "set name must start with '@'"),
        ("actions @x =", "set @x has no members"),
        ("actions @x = start bogus", "unknown action 'bogus'"),
        ("actions @x = *", "'*' is not allowed in a set"),
        ("domains @x = web1 *", "'*' is not allowed in a set"),
        ("domains @x = web/1", "bad domain name 'web/1'"),
    ],
)
def test_syntax_errors_are_located(text: str, message: str) -> None:
    errs = errors_of("# header\n" + text + "\n")
    assert len(errs) == 1, errs
    assert errs[0].startswith("t.policy:2: ")
    assert message in errs[0]


def test_subject_names_allow_dots_dashes_and_trailing_dollar() -> None:
    policy = parse_policy(
        "allow user:j.doe-2 start web1\nallow group:HOST$ start web1\nallow user:_x start web1\n"
    )
    assert policy.errors == []
    assert [r.subject_name for r in policy.rules] == ["j.doe-2", "HOST$", "_x"]


def test_domain_names_allow_colons_and_64_chars() -> None:
    rule = only_rule("allow user:a start node1:web_1.x-y," + "d" * 64)
    assert rule.domains == frozenset({"node1:web_1.x-y", "d" * 64})


def test_all_errors_are_collected_not_raised() -> None:
    errs = errors_of("allow user:a stop web1\nbogus\nallow user:a * *\n")
    assert [e.split(":")[1] for e in errs] == ["1", "2", "3"]


def test_policy_error_fields_and_str() -> None:
    error = parse_policy("bogus line", "x.policy").errors[0]
    assert isinstance(error, PolicyError)
    assert (error.file, error.line) == ("x.policy", 1)
    assert str(error) == f"x.policy:1: {error.message}"


def test_unknown_set_is_an_error() -> None:
    assert errors_of("allow user:a @nope web1\n") == ["t.policy:1: unknown set @nope"]
    assert errors_of("domains @d = web1 @missing\n") == ["t.policy:1: unknown set @missing"]


def test_set_kind_mismatch_is_an_error() -> None:
    errs = errors_of("domains @web = web1\nactions @ops = start\nallow user:a @web @ops\n")
    assert errs == [
        "t.policy:3: @web is a domain set (t.policy:1), not a action set",
        "t.policy:3: @ops is a action set (t.policy:2), not a domain set",
    ]
    assert errors_of("allow user:a start @viewer\n") == [
        "t.policy:1: @viewer is a built-in action set, not a domain set"
    ]


def test_set_cycles_are_detected() -> None:
    policy = Policy.from_texts(
        {
            "a.policy": "actions @a = start @b\n",
            "b.policy": "actions @b = @c\nactions @c = reboot @a\n",
        }
    )
    assert [str(e) for e in policy.errors] == ["b.policy:2: set cycle: @a -> @b -> @c -> @a"]
    assert errors_of("domains @self = web1 @self\n") == ["t.policy:1: set cycle: @self -> @self"]


def test_duplicate_and_builtin_set_definitions_are_errors() -> None:
    policy = Policy.from_texts(
        {"a.policy": "domains @acme = web1\n", "b.policy": "\ndomains @acme = web2\n"}
    )
    assert [str(e) for e in policy.errors] == [
        "b.policy:2: set @acme already defined at a.policy:1"
    ]
    assert errors_of("actions @operator = start\n") == [
        "t.policy:1: cannot redefine built-in set @operator"
    ]
    assert errors_of("domains @ops = web1\nactions @ops = start\n") == [
        "t.policy:2: set @ops already defined at t.policy:1"
    ]


def test_crlf_and_bom_are_tolerated() -> None:
    policy = parse_policy("\ufeffallow user:a start web1\r\nallow user:b start web2\r\n")
    assert policy.errors == []
    assert [r.domains for r in policy.rules] == [frozenset({"web1"}), frozenset({"web2"})]


def test_control_characters_are_rejected() -> None:
    assert errors_of("allow user:a start web1\x1b[2J\n")[0].startswith("t.policy:1: bad domain")
    assert "printable" in errors_of('deny user:a * * reason="x\x07"\n')[0]


# -- hostile input: every limit gives an error, quickly, never a crash ----------------------


def test_file_over_the_size_limit_is_an_error() -> None:
    text = "# " + "x" * 100 + "\n"
    text = text * (MAX_FILE_BYTES // len(text) + 1)
    assert errors_of(text) == [f"t.policy:0: file larger than {MAX_FILE_BYTES} bytes"]


def test_line_over_limit_is_an_error() -> None:
    long_line = "allow user:a start " + ",".join(["web1"] * MAX_LINE_CHARS)
    assert errors_of("allow user:a start web1\n" + long_line + "\n") == [
        f"t.policy:2: line longer than {MAX_LINE_CHARS} characters"
    ]
    # also when the length comes from continuation lines
    continued = "allow user:a start \\\n" + ("web1 \\\n" * 1000) + "web2\n"
    assert errors_of(continued) == [f"t.policy:1: line longer than {MAX_LINE_CHARS} characters"]


def test_too_many_rules_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_parser, "MAX_RULES", 50)  # parsing a million rules takes seconds
    text = "allow user:a start web1\n" * 55
    assert errors_of(text) == ["t.policy:51: too many rules (limit 50)"]
    # counted over all files together; exactly at the limit is fine
    texts = {"10-a.policy": "allow user:a start web1\n" * 30, "20-b.policy": text[: 24 * 20]}
    assert Policy.from_texts(texts).errors == []
    texts["30-c.policy"] = "# one more\ndeny user:a * *\n"
    assert [str(e) for e in Policy.from_texts(texts).errors] == [
        "30-c.policy:2: too many rules (limit 50)"
    ]


def test_limits_leave_room_for_a_policy_at_the_rule_limit() -> None:
    # A tenant rule as a provisioning system writes it, with a set of its own per tenant:
    # MAX_RULES of them must fit every other limit, so the rule limit is the one that binds.
    rule = "allow user:t0123456 @operator @t0123456 expires=2031-12-31\n"
    sets = "domains @t0123456 = t0123456-web t0123456-db\n"
    assert MAX_RULES * (len(rule) + len(sets)) <= MAX_TOTAL_BYTES
    assert MAX_SETS >= MAX_RULES
    assert MAX_FILE_BYTES // len(rule) >= 150_000  # a gateway's tenants in one file
    assert MAX_EXPANSION_WORK >= 3 * MAX_RULES  # each rule may join a few names to a set


def test_set_over_member_limit_is_an_error() -> None:
    half = MAX_SET_MEMBERS // 2 + 1
    text = (
        "domains @a = " + " ".join(f"a{i}" for i in range(half)) + "\n"
        "domains @b = " + " ".join(f"b{i}" for i in range(half)) + "\n"
        "domains @ab = @a @b\n"
    )
    assert errors_of(text) == [f"t.policy:3: set @ab has more than {MAX_SET_MEMBERS} members"]
    direct = "domains @big = \\\n" + "".join(
        f"{' '.join(f'd{i}-{j}' for j in range(100))} \\\n" for i in range(11)
    )
    errs = errors_of(direct + "\n")
    assert len(errs) == 1


def test_deep_set_nesting_is_an_error_not_a_crash() -> None:
    depth = 5000
    text = "".join(f"actions @s{i} = @s{i + 1}\n" for i in range(depth))
    text += f"actions @s{depth} = start\n"
    for order in (text, "".join(reversed(text.splitlines(keepends=True)))):
        # same verdict whether the sets are defined root first or leaf first
        errs = errors_of(order)
        assert errs[-1].endswith("too many errors; stopped here")
        assert all(f"nested more than {MAX_SET_DEPTH} deep" in e for e in errs[:-1])


def test_expansion_bomb_is_bounded() -> None:
    members = " ".join(f"d{i}" for i in range(600))
    sets = "".join(f"domains @s{i} = {members}\n" for i in range(3))
    refs = ",".join(f"@s{i % 3}" for i in range(3))
    # thousands of rules each unioning sets: must hit the budget, not run for minutes
    rules = f"allow user:a start {refs} @s0 @s1 @s2\n" * (MAX_EXPANSION_WORK // 1800 + 10)
    started = time.monotonic()
    policy = parse_policy(sets + rules, "t.policy")
    assert time.monotonic() - started < 10
    assert policy.domain_sets["s0"] == frozenset(f"d{i}" for i in range(600))
    assert any("too large to expand" in str(e) for e in policy.errors)


def test_many_errors_are_capped() -> None:
    errs = errors_of("bogus\n" * 50_000)
    assert 1 < len(errs) <= 101
    assert errs[-1].endswith("too many errors; stopped here")


def test_import_is_cheap_and_self_contained() -> None:
    code = "import json, sys, vpsshell.policy\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    modules = set(json.loads(out))
    ours = {m for m in modules if m.startswith("vpsshell")}
    # vpsshell.checks: the one module of checks every part shares, standard library only
    shared = {"vpsshell", "vpsshell.checks"}
    assert all(m in shared or m.startswith("vpsshell.policy") for m in ours), ours
    assert not modules & {"rich", "prompt_toolkit", "asyncio", "libvirt", "pyxs"}
