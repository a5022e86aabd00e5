"""``vpsshell-admin`` in process on a temporary policy directory (no helper running).

Commands run through ``run()`` with pipes for stdin/stdout, a fixed clock and fixed users, so
every output line and exit status is checked exactly. The editor for ``policy edit`` is a real
script the test writes.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
import stat
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpsshell.admin.grants import MANAGED_FILE, MANAGED_HEADER
from vpsshell.admin.identities import StaticIdentities
from vpsshell.admin.install import CONFIG_TEMPLATE
from vpsshell.admin.main import build_parser, run
from vpsshell.admin.policydir import LOCK_NAME
from vpsshell.daemon.config import DaemonConfig, parse_config
from vpsshell.policy import loader as policy_loader
from vpsshell.policy import parser as policy_parser

NOW = dt.datetime(2026, 6, 1, 12, 0)
PEOPLE = StaticIdentities(
    {"alice": ["alice"], "bob": ["bob"], "carol": ["carol", "acme"], "mallory": ["acme"]}
)
POLICY = """\
# tenants
allow user:alice   @operator web1 web2
allow group:acme   @viewer   db1
deny  user:mallory *         *   reason="suspended"
"""


@dataclass
class Site:
    root: Path
    policy_dir: Path
    config: Path
    audit_log: Path

    def write(self, name: str, text: str, mode: int = 0o644) -> Path:
        path = self.policy_dir / name
        path.write_text(text)
        path.chmod(mode)
        return path

    def read(self, name: str) -> str:
        return (self.policy_dir / name).read_text()


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def site(tmp_path: Path) -> Site:
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir(mode=0o755)
    policy_dir.chmod(0o755)
    config = tmp_path / "vpsshelld.toml"
    audit_log = tmp_path / "audit.jsonl"
    config.write_text(
        textwrap.dedent(f"""\
        policy_dir = "{policy_dir}"
        admin_socket = "{tmp_path / "admin.sock"}"
        audit_log = "{audit_log}"
        """)
    )
    made = Site(tmp_path, policy_dir, config, audit_log)
    made.write("10-tenants.policy", POLICY)
    return made


def admin(
    site: Site, *argv: str, stdin: str = "", environ: dict[str, str] | None = None
) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    code = run(
        ["--config", str(site.config), *argv],
        stdin=io.StringIO(stdin),
        stdout=out,
        stderr=err,
        environ=environ if environ is not None else {"PATH": "/usr/bin:/bin"},
        now=NOW,
        identities=PEOPLE,
    )
    return Outcome(code, out.getvalue(), err.getvalue())


@pytest.fixture
def held_lock(site: Site) -> Iterator[None]:
    fd = os.open(site.policy_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    yield
    os.close(fd)


# -- check, explain, who, list, test ---------------------------------------------------------


def test_check_passes_and_reports_errors_with_full_path(site: Site) -> None:
    assert admin(site, "policy", "check").out == "OK: 3 rule(s) in 1 file(s)\n"
    site.write("30-broken.policy", "allow user:alice @operatr web1\n")
    result = admin(site, "policy", "check")
    assert result.code == 1
    assert result.out.splitlines() == [
        f"{site.policy_dir}/30-broken.policy:1: unknown set @operatr",
        "1 error(s): the helper denies everything until they are fixed",
    ]


def test_config_is_accepted_after_the_subcommand(site: Site) -> None:
    out = io.StringIO()
    code = run(["policy", "check", "--config", str(site.config)], stdout=out, now=NOW)
    assert (code, out.getvalue()) == (0, "OK: 3 rule(s) in 1 file(s)\n")


def test_check_strict_finds_an_expired_rule(site: Site) -> None:
    site.write("20-old.policy", "allow user:bob status web3 expires=2020-01-01\n")
    assert admin(site, "policy", "check").code == 0
    result = admin(site, "policy", "check", "--strict")
    assert result.code == 1
    assert result.out.splitlines() == [
        f"{site.policy_dir}/20-old.policy:1: warning: expired on 2020-01-01: "
        "this rule never matches",
        "OK: 4 rule(s) in 2 file(s), 1 warning(s)",
    ]


def test_explain_names_the_deciding_rule_and_groups(site: Site) -> None:
    allowed = admin(site, "policy", "explain", "carol", "log", "db1")
    assert allowed.code == 0
    assert allowed.out.splitlines() == [
        "ALLOW: carol log db1",
        "groups: acme, carol",
        "* 10-tenants.policy:3: allow group:acme status,watch,log,events db1",
    ]
    denied = admin(site, "policy", "explain", "mallory", "status", "db1")
    assert denied.code == 1
    assert "reason: suspended" in denied.out
    assert "* 10-tenants.policy:4: deny user:mallory * * reason=suspended" in denied.out
    assert "  10-tenants.policy:3: allow group:acme" in denied.out
    unknown = admin(site, "policy", "explain", "zed", "status", "db1")
    assert unknown.code == 1 and "zed is not a known user" in unknown.err
    assert admin(site, "policy", "explain", "alice", "fly", "web1").code == 2


def test_who_and_list(site: Site) -> None:
    who = admin(site, "policy", "who", "db1")
    assert who.out.splitlines() == [
        "on db1:",
        "  carol       status watch log events  [10-tenants.policy:3]",
        "  group:acme  status watch log events  [10-tenants.policy:3]",
        "(group:NAME: any member of that group)",
    ]
    data = json.loads(admin(site, "policy", "list", "alice", "--json").out)
    assert [(row["domain"], row["rules"]) for row in data["access"]] == [
        ("web1", ["10-tenants.policy:2"]),
        ("web2", ["10-tenants.policy:2"]),
    ]
    assert "reset" in data["access"][0]["actions"]
    assert admin(site, "policy", "list", "mallory").out == "mallory may do nothing\n"
    assert admin(site, "policy", "who", "nope").out == "nobody may do anything on nope\n"
    assert admin(site, "policy", "who", "bad/name").code == 2


def test_policy_test_file_passes_and_fails_with_locations(site: Site) -> None:
    good = site.root / "good.txt"
    good.write_text("# ok\nallow alice reboot web1\ndeny mallory status db1\n\n")
    result = admin(site, "policy", "test", str(good))
    assert (result.code, result.out) == (0, "2 assertion(s), 0 failed\n")
    bad = site.root / "bad.txt"
    bad.write_text("allow alice reboot web1\nallow bob start web1\ndeny carol log db1\n")
    result = admin(site, "policy", "test", str(bad))
    assert result.code == 1
    assert result.out.splitlines() == [
        f"{bad}:2: expected allow, got deny: bob start web1 (no rule grants this)",
        f"{bad}:3: expected deny, got allow: carol log db1 "
        "(10-tenants.policy:3: allow group:acme status,watch,log,events db1)",
        "3 assertion(s), 2 failed",
    ]


def test_a_watch_through_console_is_explained_listed_and_tested_as_the_helper_decides(
    site: Site,
) -> None:
    site.write("20-consoles.policy", "allow user:bob console web2 confirm=password\n")
    explain = admin(site, "policy", "explain", "bob", "watch", "web2")
    assert explain.code == 0
    assert explain.out.splitlines() == [
        "ALLOW: bob watch web2",
        "groups: bob",
        "note: console implies watch: no rule names watch here, so the console rules below decide",
        "confirm: password",
        "* 20-consoles.policy:1: allow user:bob console web2 confirm=password",
    ]
    assert admin(site, "policy", "who", "web2").out.splitlines()[2] == (
        "  bob    status console(confirm=password) watch(confirm=password)  [20-consoles.policy:1]"
    )
    listed = json.loads(admin(site, "policy", "list", "bob", "--json").out)["access"]
    assert listed[0]["actions"] == ["status", "console", "watch"]
    assert listed[0]["confirm"] == {"console": "password", "watch": "password"}
    expectations = site.root / "watch.txt"
    expectations.write_text("deny bob watch web2\ndeny bob watch web1\n")
    tested = admin(site, "policy", "test", str(expectations))
    assert tested.out.splitlines() == [
        f"{expectations}:1: expected deny, got allow: bob watch web2 "
        "(20-consoles.policy:1: allow user:bob console web2 confirm=password; "
        "console implies watch)",
        "2 assertion(s), 1 failed",
    ]
    # a rule that denies watch still wins over the console grant
    site.write("30-nowatch.policy", "deny user:bob watch web2\n")
    denied = admin(site, "policy", "explain", "bob", "watch", "web2")
    assert denied.code == 1
    assert denied.out.splitlines()[0] == "DENY: bob watch web2"
    assert "* 30-nowatch.policy:1: deny user:bob watch web2" in denied.out
    assert "console implies" not in denied.out


def test_a_console_grant_shows_the_watch_it_implies_and_a_watch_deny_removes_it(
    site: Site,
) -> None:
    granted = admin(site, "policy", "grant", "user:bob", "console", "web2")
    assert granted.code == 0
    assert "+ bob status,console,watch web2" in granted.out
    site.write("30-nowatch.policy", "deny user:bob watch web2\n")
    revoked = admin(site, "policy", "revoke", "user:bob", "console", "web2")
    assert revoked.code == 0
    assert "- bob status,console web2" in revoked.out
    regranted = admin(site, "policy", "grant", "user:bob", "console", "web2")
    assert "+ bob status,console web2" in regranted.out


def test_read_only_commands_take_another_policy_dir(site: Site, tmp_path: Path) -> None:
    other = tmp_path / "checkout"
    other.mkdir(mode=0o755)
    (other / "10-x.policy").write_text("allow user:bob start web9\n")
    (other / "10-x.policy").chmod(0o644)
    result = admin(site, "policy", "explain", "bob", "start", "web9", "--policy-dir", str(other))
    assert result.code == 0 and "10-x.policy:1" in result.out


# -- grant and revoke ------------------------------------------------------------------------


def test_grant_writes_the_managed_file_and_is_idempotent(site: Site) -> None:
    result = admin(site, "policy", "grant", "user:bob", "@operator", "web2")
    assert result.code == 0
    assert result.out.splitlines()[:2] == [
        "changes in who may do what (+ now allowed, - no longer allowed):",
        "+ bob status,start,shutdown,reboot,poweroff,reset,console,watch,log,events web2",
    ]
    assert f"installed {site.policy_dir}/{MANAGED_FILE}" in result.out
    assert "the helper is not running" in result.err
    managed = site.policy_dir / MANAGED_FILE
    assert managed.read_text() == MANAGED_HEADER + "allow user:bob @operator web2\n"
    assert stat.S_IMODE(managed.stat().st_mode) == 0o644
    again = admin(site, "policy", "grant", "user:bob", "@operator", "web2")
    assert (again.code, again.out) == (
        0,
        f"already granted in {MANAGED_FILE}: allow user:bob @operator web2\n",
    )
    explain = admin(site, "policy", "explain", "bob", "start", "web2")
    assert f"* {MANAGED_FILE}:4: allow user:bob" in explain.out


def test_grant_again_with_new_options_updates_the_rule(site: Site) -> None:
    admin(site, "policy", "grant", "user:bob", "start", "web2")
    result = admin(
        site, "policy", "grant", "user:bob", "start", "web2",
        "--expires", "2026-12-31", "--reason", "ticket 42",
    )  # fmt: skip
    assert result.code == 0
    assert site.read(MANAGED_FILE) == (
        MANAGED_HEADER + 'allow user:bob start web2 expires=2026-12-31 reason="ticket 42"\n'
    )


def test_grant_dry_run_changes_nothing(site: Site) -> None:
    result = admin(site, "policy", "grant", "group:acme", "reboot", "db1", "--dry-run")
    assert result.code == 0
    assert "+ carol reboot db1" in result.out and "dry run: nothing was changed" in result.out
    assert not (site.policy_dir / MANAGED_FILE).exists()


@pytest.mark.parametrize(
    "words",
    [
        ["user:bob", "start", "web2 #"],
        ["user:bob", "start", "web2\nallow user:bob * *"],
        ["user:bob", "start", 'web2 reason="x"'],
        ["user:bob", "start", "expires=2030-01-01"],
        ["user:bob", "@operatr", "web2"],
        ["user:bob", "start", "*"],
        ["bob", "start", "web2"],
    ],
)
def test_grant_refuses_bad_words_and_writes_nothing(site: Site, words: list[str]) -> None:
    result = admin(site, "policy", "grant", *words)
    assert result.code == 2, result
    assert not (site.policy_dir / MANAGED_FILE).exists()


def test_grant_refuses_a_reason_with_quotes(site: Site) -> None:
    result = admin(site, "policy", "grant", "user:bob", "start", "web2", "--reason", 'a"b')
    assert result.code == 2 and not (site.policy_dir / MANAGED_FILE).exists()


def test_grant_says_when_a_deny_still_wins(site: Site) -> None:
    result = admin(site, "policy", "grant", "user:mallory", "start", "web1")
    assert result.code == 1
    assert "user:mallory is still denied: start web1 (denied by 10-tenants.policy:4)" in result.out


def test_grant_is_refused_while_the_policy_is_broken(site: Site) -> None:
    site.write("30-broken.policy", "allow user:alice @operatr web1\n")
    result = admin(site, "policy", "grant", "user:bob", "start", "web2")
    assert result.code == 1
    assert "30-broken.policy:1: unknown set @operatr" in result.out
    assert not (site.policy_dir / MANAGED_FILE).exists()


@pytest.fixture
def at_rule_limit(site: Site, monkeypatch: pytest.MonkeyPatch) -> str:
    """A policy of exactly the rule limit (made 8 here: parsing a million rules takes seconds).

    Returns the text of its generated tenants file.
    """
    monkeypatch.setattr(policy_parser, "MAX_RULES", 8)
    text = "".join(f"allow user:t{i} @operator t{i}-web\n" for i in range(5))
    site.write("20-generated.policy", text)
    assert admin(site, "policy", "check").out == "OK: 8 rule(s) in 2 file(s)\n"
    return text


def listing(site: Site) -> list[str]:
    """The policy directory's entries but the lock (temporary files are hidden: listed too)."""
    return sorted(set(os.listdir(site.policy_dir)) - {LOCK_NAME})


def test_grant_that_would_cross_the_rule_limit_is_refused(site: Site, at_rule_limit: str) -> None:
    before = listing(site)
    result = admin(site, "policy", "grant", "user:bob", "start", "web2")
    assert result.code == 1, result
    assert result.out == (
        f"{site.policy_dir}/{MANAGED_FILE}:4: too many rules (limit 8)\n"
        "1 error(s): nothing was installed\n"
    )
    assert listing(site) == before  # no managed file, no leftovers
    assert site.read("20-generated.policy") == at_rule_limit
    assert admin(site, "policy", "explain", "alice", "start", "web1").code == 0
    # the same for an edit that adds a file, and for one that grows a file
    env = editor(site, 'echo "allow user:bob log web2" >> "$1"\n')
    for name in ("60-new.policy", "20-generated.policy"):
        result = admin(site, "policy", "edit", name, stdin="x\n", environ=env)
        assert result.code == 1, result
        assert "too many rules (limit 8)" in result.out
        assert "discarded; nothing was changed" in result.out
    assert listing(site) == before
    assert site.read("20-generated.policy") == at_rule_limit


def test_at_the_rule_limit_revoke_and_replacing_grants_still_work(
    site: Site, at_rule_limit: str
) -> None:
    site.write("20-generated.policy", at_rule_limit.split("\n", 1)[1])  # one rule of room
    assert admin(site, "policy", "grant", "user:bob", "start", "web2").code == 0
    # at the limit now: new options for the same grant replace its rule, a revoke makes room
    again = admin(site, "policy", "grant", "user:bob", "start", "web2", "--expires", "2031-01-01")
    assert again.code == 0, again
    result = admin(site, "policy", "revoke", "user:bob", "start", "web2")
    assert result.code == 0, result
    assert "- bob status,start web2" in result.out


def test_a_change_that_would_cross_the_file_limit_is_refused(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_loader, "MAX_FILES", 1)
    result = admin(site, "policy", "grant", "user:bob", "start", "web2")
    assert result.code == 1
    assert f"{site.policy_dir}: more than 1 policy files" in result.out
    assert not (site.policy_dir / MANAGED_FILE).exists()


def test_revoke_removes_and_splits_managed_rules(site: Site) -> None:
    admin(site, "policy", "grant", "user:bob", "@operator", "web2,web3")
    result = admin(site, "policy", "revoke", "user:bob", "reboot,reset", "web3")
    assert result.code == 0
    assert "- bob reboot,reset web3" in result.out
    assert site.read(MANAGED_FILE) == MANAGED_HEADER + (
        "allow user:bob @operator web2\n"
        "allow user:bob status,start,shutdown,poweroff,console,watch,log,events web3\n"
    )
    result = admin(site, "policy", "revoke", "user:bob", "*", "*")
    assert result.code == 0
    assert site.read(MANAGED_FILE) == MANAGED_HEADER
    assert admin(site, "policy", "explain", "bob", "status", "web2").code == 1


def test_revoke_of_nothing_succeeds_and_changes_nothing(site: Site) -> None:
    result = admin(site, "policy", "revoke", "user:bob", "start", "web2")
    assert (result.code, result.out) == (0, f"nothing to revoke: there is no {MANAGED_FILE}\n")


def test_revoke_names_rules_elsewhere_that_still_allow(site: Site) -> None:
    admin(site, "policy", "grant", "user:alice", "sysrq", "web1")
    result = admin(site, "policy", "revoke", "user:alice", "sysrq,reboot", "web1")
    assert result.code == 1
    assert "- alice sysrq web1" in result.out
    assert "user:alice may still do: reboot on web1 (by 10-tenants.policy:2)" in result.out


def test_changes_are_refused_while_the_lock_is_held(site: Site, held_lock: None) -> None:
    result = admin(site, "policy", "grant", "user:bob", "start", "web2")
    assert result.code == 75
    assert "being changed by another vpsshell-admin (pid 4242)" in result.err
    assert not (site.policy_dir / MANAGED_FILE).exists()
    assert admin(site, "policy", "edit", environ={"EDITOR": "/bin/true"}).code == 75


# -- edit ------------------------------------------------------------------------------------


def editor(site: Site, body: str) -> dict[str, str]:
    script = site.root / "editor.sh"
    script.write_text("#!/bin/sh\nset -e\n" + body)
    script.chmod(0o755)
    return {"PATH": "/usr/bin:/bin", "EDITOR": str(script)}


def test_edit_with_a_syntax_error_is_never_installed(site: Site) -> None:
    env = editor(site, 'echo "allow user:bob @operatr web1" >> "$1"\n')
    result = admin(site, "policy", "edit", "10-tenants.policy", stdin="x\n", environ=env)
    assert result.code == 1
    assert f"{site.policy_dir}/10-tenants.policy:5: unknown set @operatr" in result.out
    assert "discarded; nothing was changed" in result.out
    assert site.read("10-tenants.policy") == POLICY
    # end of input at the prompt also discards
    assert admin(site, "policy", "edit", "10-tenants.policy", environ=env).code == 1
    assert site.read("10-tenants.policy") == POLICY


def test_edit_again_then_apply(site: Site) -> None:
    counter = site.root / "count"
    env = editor(
        site,
        f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}\n"
        'if [ "$n" = 0 ]; then echo "allow user:bob @operatr web1" >> "$1"; '
        "else sed -i 's/@operatr/@viewer/' \"$1\"; fi\n",
    )
    result = admin(site, "policy", "edit", "10-tenants.policy", stdin="e\na\n", environ=env)
    assert result.code == 0, result
    assert "+ bob status,watch,log,events web1" in result.out
    assert site.read("10-tenants.policy") == POLICY + "allow user:bob @viewer web1\n"
    assert counter.read_text() == "2\n"


def test_edit_shows_the_diff_and_discard_keeps_the_old_file(site: Site) -> None:
    env = editor(site, "sed -i '/mallory/d' \"$1\"\n")
    result = admin(site, "policy", "edit", "10-tenants.policy", stdin="x\n", environ=env)
    assert result.code == 1
    assert "+ mallory status,watch,log,events db1" in result.out
    assert site.read("10-tenants.policy") == POLICY


def test_edit_creates_the_default_file(site: Site) -> None:
    env = editor(site, 'echo "allow user:bob log web1" >> "$1"\n')
    result = admin(site, "policy", "edit", stdin="a\n", environ=env)
    assert result.code == 0, result
    assert site.read("50-local.policy").endswith("allow user:bob log web1\n")
    assert stat.S_IMODE((site.policy_dir / "50-local.policy").stat().st_mode) == 0o644


def test_edit_refuses_when_the_file_changed_underneath(site: Site) -> None:
    real = site.policy_dir / "10-tenants.policy"
    env = editor(site, f'echo "allow user:bob log web1" >> "$1"\necho "# someone else" >> {real}\n')
    result = admin(site, "policy", "edit", "10-tenants.policy", stdin="a\n", environ=env)
    assert result.code == 1
    assert "changed while this change was being prepared; nothing installed" in result.out
    kept = result.out.split("your version is kept in ")[1].strip()
    assert Path(kept).read_text().endswith("allow user:bob log web1\n")
    assert site.read("10-tenants.policy") == POLICY + "# someone else\n"


def test_edit_with_a_failing_editor_or_no_change(site: Site) -> None:
    failing = editor(site, "exit 3\n")
    result = admin(site, "policy", "edit", "10-tenants.policy", environ=failing)
    assert result.code == 1 and "exited with status 3" in result.out
    unchanged = editor(site, "true\n")
    result = admin(site, "policy", "edit", "10-tenants.policy", environ=unchanged)
    assert (result.code, result.out) == (0, "10-tenants.policy: no changes\n")


def test_edit_runs_the_editor_without_a_shell(site: Site) -> None:
    script = site.root / "ed with space.sh"
    script.write_text('#!/bin/sh\necho "allow user:bob log web1 # $1" >> "$2"\n')
    script.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "VISUAL": f"'{script}' ';touch {site.root}/pwned'"}
    result = admin(site, "policy", "edit", "10-tenants.policy", stdin="a\n", environ=env)
    assert result.code == 0, result
    assert not (site.root / "pwned").exists()
    assert site.read("10-tenants.policy").endswith(f"# ;touch {site.root}/pwned\n")


def test_edit_refuses_names_the_helper_would_ignore(site: Site) -> None:
    assert admin(site, "policy", "edit", "Tenants.txt").code == 2
    assert admin(site, "policy", "edit", "/etc/passwd").code == 1


# -- audit -----------------------------------------------------------------------------------


def test_audit_pretty_prints_filters_and_stays_inert(site: Site) -> None:
    records = [
        {"time": "T1", "uid": 1001, "user": "alice", "action": "start", "domain": "web1",
         "decision": "allow", "rule": "10-x.policy:2", "result": "ok", "duration_ms": 1.5},
        {"time": "T2", "uid": 1002, "user": "bob", "action": "status", "domain": "web\x1b[31m",
         "decision": "deny", "result": "denied", "message": "evil \x1b]0;title\x07 \u202e"},
    ]  # fmt: skip
    site.audit_log.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json \x1b[2J\n")
    result = admin(site, "audit")
    assert result.code == 0
    for stream in (result.out, result.err):
        assert "\x1b" not in stream and "\x07" not in stream and "\u202e" not in stream
    lines = result.out.splitlines()
    assert lines[0].split() == [
        "T1", "alice(1001)", "start", "web1", "allow", "ok", "rule=10-x.policy:2", "1.5ms"
    ]  # fmt: skip
    assert "web\\x1b[31m" in lines[1] and "\\u202e" in lines[1]
    assert "not a JSON record" in result.err
    assert admin(site, "audit", "--user", "bob").out.count("\n") == 1
    assert admin(site, "audit", "--user", "1001").out.startswith("T1")
    assert admin(site, "audit", "--domain", "web1", "--json").out == (
        json.dumps(records[0], separators=(",", ":")) + "\n"
    )
    assert admin(site, "audit", "--lines", "1").out.startswith("T2")


def test_audit_without_a_log_fails(site: Site) -> None:
    result = admin(site, "audit")
    assert result.code == 1 and "cannot read the audit log" in result.err


# -- install ---------------------------------------------------------------------------------


def test_config_template_holds_the_defaults() -> None:
    import tomllib

    parsed = parse_config(tomllib.loads(CONFIG_TEMPLATE), "template")
    defaults = DaemonConfig()
    for key in ("socket", "socket_group", "admin_socket", "policy_dir", "audit_log"):
        assert getattr(parsed, key) == getattr(defaults, key)
    assert (parsed.state_dir, parsed.hooks_dir) == (defaults.state_dir, defaults.hooks_dir)


def test_install_into_a_root_is_idempotent_and_keeps_admin_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package imported here is the checkout's, which may be in a /root that tenants
    # cannot enter; that refusal has tests of its own (test_admin_interpreter.py).
    monkeypatch.setattr("vpsshell.admin.install.refuse_unusable_launcher", lambda group: None)
    root = tmp_path / "root"

    def install(*extra: str) -> Outcome:
        out = io.StringIO()
        code = run(["install", "--root", str(root), *extra], stdout=out)
        return Outcome(code, out.getvalue(), "")

    dry = install("--dry-run")
    assert dry.code == 0 and "would create" in dry.out and not root.exists()
    first = install()
    assert first.code == 0
    for path in (
        "etc/vpsshell/vpsshelld.toml",
        "etc/vpsshell/policy.d/50-local.policy",
        "etc/pam.d/vpsshell",
        "etc/systemd/system/vpsshelld.service",
        "usr/local/share/man/man8/vpsshell-admin.8",
        "usr/local/share/man/man5/vpsshell-policy.5",
        "usr/local/bin/vpsshell",
    ):
        assert (root / path).is_file(), path
    assert not (root / "etc/ssh").exists()
    assert (root / "etc/shells").read_text() == "/usr/local/bin/vpsshell\n"
    assert os.readlink(root / "usr/local/sbin/vpsshelld").endswith("/vpsshelld")
    unit = (root / "etc/systemd/system/vpsshelld.service").read_text()
    assert "ExecStart=/usr/local/sbin/vpsshelld --foreground" in unit
    assert stat.S_IMODE((root / "usr/local/bin/vpsshell").stat().st_mode) == 0o755
    (root / "etc/pam.d/vpsshell").write_text("# mine\n")
    second = install("--sshd")
    assert second.code == 0
    changed = [line for line in second.out.splitlines() if line.split()[0] not in
               ("unchanged", "kept", "skipped")]  # fmt: skip
    assert changed == [
        f"created        {'/etc/ssh/sshd_config.d/vpsshell.conf'}",
        "1 change(s) made",
        changed[-1],
    ]
    assert "kept           /etc/pam.d/vpsshell" in second.out
    assert (root / "etc/pam.d/vpsshell").read_text() == "# mine\n"
    assert (root / "etc/shells").read_text() == "/usr/local/bin/vpsshell\n"


def test_every_parser_leaf_has_a_handler() -> None:
    parser = build_parser()
    args = parser.parse_args(["policy", "who", "web1"])
    assert callable(args.handler)


def test_a_partial_revoke_of_everything_keeps_the_key_action(site: Site) -> None:
    granted = admin(site, "policy", "grant", "user:bob", "*", "web2")
    assert granted.code == 0, granted.out
    result = admin(site, "policy", "revoke", "user:bob", "reset", "web2")
    assert result.code == 0, result.out
    kept = site.read(MANAGED_FILE).removeprefix(MANAGED_HEADER)
    assert kept.startswith("allow user:bob ") and kept.rstrip().endswith(",keys web2"), kept
    assert "reset" not in kept
    assert admin(site, "policy", "check").code == 0


def test_explain_knows_keys_and_the_self_service_default(site: Site) -> None:
    allowed = admin(site, "policy", "explain", "bob", "keys", "web2")
    assert allowed.code == 0, allowed.err
    assert allowed.out.startswith("ALLOW: bob keys web2\n")
    assert "keys_self_service lets every tenant use it" in allowed.out
    site.write("20-frozen.policy", "deny user:bob * * reason=frozen\n")
    denied = admin(site, "policy", "explain", "bob", "keys", "web2")
    assert denied.code == 1 and denied.out.startswith("DENY: bob keys web2\n"), denied.out
