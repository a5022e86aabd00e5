"""Real tenants run ``vpsshell -c`` against a real helper: ownership, groups, exit codes."""

from __future__ import annotations

from harness import Helper, run, state_of, vpsshell_as, wait_until

DENIED = "no such domain or permission denied"


def test_tenant_lists_only_own_domains(helper: Helper) -> None:
    result = run("vpst-alice", helper, "list --json")
    assert result.code == 0, result
    names = sorted(d["name"] for d in result.json())
    assert names == ["stubborn", "web1", "web2"]
    for domain in result.json():
        assert {"name", "uuid", "state", "vcpus", "memory_mib", "uptime_seconds", "host"} <= set(
            domain
        )


def test_owner_starts_and_status_shows_running(helper: Helper) -> None:
    assert run("vpst-alice", helper, "start web1").code == 0
    wait_until(lambda: state_of(helper, "vpst-alice", "web1") == "running", 10, "web1 running")
    status = run("vpst-alice", helper, "status web1 --json").json()
    assert status["uptime_seconds"] is not None
    assert status["vcpus"] == 1 and status["memory_mib"] == 512


def test_non_owner_and_unknown_domain_look_the_same(helper: Helper) -> None:
    denied = run("vpst-bob", helper, "start web1")
    unknown = run("vpst-bob", helper, "start nosuchdom")
    assert denied.code == unknown.code == 77
    assert DENIED in denied.err
    assert denied.err.replace("web1", "X") == unknown.err.replace("nosuchdom", "X")
    assert run("vpst-alice", helper, "status web1").code == 0  # untouched


def test_group_grant_and_deny_beats_allow(helper: Helper) -> None:
    assert run("vpst-carol", helper, "start db1").code == 0
    assert run("vpst-mallory", helper, "start db1").code == 77
    assert run("vpst-mallory", helper, "list --json").json() == []


def test_expired_rule_no_longer_matches(helper: Helper) -> None:
    result = run("vpst-bob", helper, "list --json")
    assert [d["name"] for d in result.json()] == ["web4"]
    assert run("vpst-bob", helper, "status web3").code == 77
    assert run("vpst-bob", helper, "status web4").code == 0
    # @viewer does not include start
    assert run("vpst-bob", helper, "start web4").code == 77


def test_power_actions_follow_the_state_machine(helper: Helper) -> None:
    alice = "vpst-alice"
    assert run(alice, helper, "reboot web1").code == 1  # shut off: nothing to reboot
    assert run(alice, helper, "boot web1").code == 0  # alias of start
    again = run(alice, helper, "start web1")
    assert again.code == 1 and "already" in again.err
    wait_until(lambda: state_of(helper, alice, "web1") == "running", 10, "web1 running")
    assert run(alice, helper, "reboot web1").code == 0
    wait_until(lambda: state_of(helper, alice, "web1") == "running", 10, "web1 back up")
    assert run(alice, helper, "reset web1").code == 0
    wait_until(lambda: state_of(helper, alice, "web1") == "running", 10, "web1 up after reset")
    assert run(alice, helper, "destroy web1").code == 0  # alias of poweroff
    assert state_of(helper, alice, "web1") == "shutoff"


def test_shutdown_wait_returns_once_off(helper: Helper) -> None:
    alice = "vpst-alice"
    run(alice, helper, "start web1")
    wait_until(lambda: state_of(helper, alice, "web1") == "running", 10, "web1 running")
    result = run(alice, helper, "shutdown web1 --wait=20")
    assert result.code == 0, result
    assert "shut off" in result.out
    assert state_of(helper, alice, "web1") == "shutoff"


def test_shutdown_wait_times_out_and_force_powers_off(helper: Helper) -> None:
    alice = "vpst-alice"
    run(alice, helper, "start stubborn")
    wait_until(lambda: state_of(helper, alice, "stubborn") == "running", 10, "stubborn running")
    timed_out = run(alice, helper, "shutdown stubborn --wait=1")
    assert timed_out.code == 75, timed_out
    assert state_of(helper, alice, "stubborn") == "shutting-down"
    forced = run(alice, helper, "shutdown stubborn --wait=1 --force")
    assert forced.code == 0, forced
    assert state_of(helper, alice, "stubborn") == "shutoff"


def test_concurrent_power_actions_on_one_domain_do_not_interleave(helper: Helper) -> None:
    import subprocess

    from harness import BIN

    alice = "vpst-alice"
    run(alice, helper, "start web2")
    wait_until(lambda: state_of(helper, alice, "web2") == "running", 10, "web2 running")
    waiting = subprocess.Popen(
        [
            "runuser",
            "-u",
            alice,
            "--",
            "env",
            f"VPSSHELL_SOCKET={helper.socket}",
            str(BIN / "vpsshell"),
            "-c",
            "shutdown web2 --wait=30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_until(lambda: state_of(helper, alice, "web2") == "shutting-down", 10, "shutting down")
    busy = run(alice, helper, "poweroff web2")
    assert busy.code == 75, busy
    assert "busy" in busy.err
    assert waiting.wait(30) == 0
    assert state_of(helper, alice, "web2") == "shutoff"


def test_usage_errors_are_64_and_reach_nothing(helper: Helper) -> None:
    alice = "vpst-alice"
    for line in [
        "frobnicate web1",
        "start --help",
        "start -rf",
        "list\nstart web1",
        "list\rstart web1",
        "start web1\u2028",
        "\u0455tart web1",  # Cyrillic dze looks like "s"
        "start web1\x1b[2J",
        "start " + "a" * 2000,
        "start web1 web2",
        "start",
        "shutdown web1 --wait=abc",
        "list --json --json",
        "use web1",  # interactive only
    ]:
        result = run(alice, helper, line)
        assert result.code == 64, (line, result)
        assert result.err.count("\n") == 1, (line, result.err)
    assert state_of(helper, alice, "web1") == "shutoff"


def test_help_and_version_and_whoami(helper: Helper) -> None:
    help_text = run("vpst-alice", helper, "help")
    assert help_text.code == 0
    for verb in ("list", "status", "start", "shutdown", "reboot", "poweroff", "reset"):
        assert verb in help_text.out
    # the login shell's own verbs are listed too, marked: `ssh host help` shows quit
    use = next(line for line in help_text.out.splitlines() if "use DOMAIN" in line)
    assert use.endswith("(interactive shell only)")
    assert "also quit (interactive shell only)" in help_text.out
    assert "--wait" in run("vpst-alice", helper, "help shutdown").out
    who = run("vpst-carol", helper, "whoami --json").json()
    assert who["user"] == "vpst-carol" and "vpst-team" in who["groups"]
    version = run("vpst-carol", helper, "version")
    assert version.code == 0 and "backend sim" in version.out


def test_refused_argv(helper: Helper) -> None:
    for argv in (["--version"], ["-c"], ["-c", "list", "extra"], ["-i"], ["list"]):
        result = vpsshell_as("vpst-alice", helper, *argv)
        assert result.code == 64, (argv, result)


def test_helper_down_is_69_and_names_the_socket(helper: Helper) -> None:
    helper.stop()
    result = run("vpst-alice", helper, "list")
    assert result.code == 69
    assert str(helper.socket) in result.err


def test_file_transfer_and_shell_commands_are_refused_and_audited(helper: Helper) -> None:
    for line in [
        "/bin/sh",
        "bash --noprofile",
        "scp -t /tmp",
        "rsync --server -vlogDtpre.iLsfxC . /tmp",
        "/usr/lib/openssh/sftp-server",
        "/bin/sh .ssh/rc",
    ]:
        result = run("vpst-carol", helper, line)
        assert result.code == 64, (line, result)
    refused = [
        entry["line"]
        for entry in helper.audit()
        if entry.get("user") == "vpst-carol" and entry.get("decision") == "refused"
    ]
    assert "scp -t /tmp" in refused and "/usr/lib/openssh/sftp-server" in refused
    assert len(refused) == 6
