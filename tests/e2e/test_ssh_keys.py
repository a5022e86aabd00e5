"""Tenants manage their SSH keys and a second factor over real SSH (OpenSSH's sshd and ssh,
paramiko clients), with the shipped Match block and the helper writing the key files sshd reads.

A key added with ``keys add`` logs in at the next login; removed, it is refused and the live
session it opened is ended. Keys sshd must never see from a tenant (options, DSA, short RSA,
garbage, duplicates, one too many) are refused and leave the file as it was. With the shipped
second-factor Match block and the README's pam_oath line, a login needs key and code (a code
computed here, RFC 6238 with the standard library's hmac); ``confirm=totp`` asks for a code
before a reboot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
import sshclient
from harness import Helper, vpsshell_admin, wait_until
from sshclient import SshConnection, Sshd, shipped_snippet
from sshsite import ALICE, CAROL, SSH_GROUP, SSH_POLICY, Connect, SshSite, site_helper

from vpsshell.admin.context import AdminExit
from vpsshell.daemon.totp import totp_code

KEYS_POLICY = (
    SSH_POLICY
    + f"""\
allow group:{SSH_GROUP} keys *
allow user:{ALICE} reboot web1 confirm=totp
"""
)
KEYS_PER_USER = 3
PAM_OATH = "/lib/x86_64-linux-gnu/security/pam_oath.so"
SECOND_FACTOR_BLOCK = (
    "#Match Group vpsshell-totp\n"
    "#    AuthenticationMethods publickey,keyboard-interactive\n"
    "#    KbdInteractiveAuthentication yes\n"
)
# the README's lines for /etc/pam.d/sshd, with the test's group and users file
PAM_LINES = """\
auth [success=1 default=ignore] pam_succeed_if.so quiet user notingroup {group}
auth [success=done default=die] pam_oath.so usersfile={users} window=1 digits=6
account required pam_permit.so
session required pam_permit.so
"""


@pytest.fixture
def keys_helper(ssh_site: SshSite, open_dir: Path) -> Iterator[Helper]:
    """A helper that writes the site sshd's key files; each tenant starts with its own key."""
    for tenant in ssh_site.tenants.values():
        ssh_site.sshd.authorize(tenant.name, tenant.key)
    users = open_dir / "totp" / "users.oath"
    config = f'authorized_keys_dir = "{ssh_site.sshd.keys_dir}"\ntotp_users_file = "{users}"\n'
    with site_helper(
        ssh_site,
        open_dir / "helper",
        policy=KEYS_POLICY,
        extra_config=config,
        extra_limits=f"keys_per_user = {KEYS_PER_USER}",
    ) as helper:
        yield helper


class KeyPair:
    """A key made by ssh-keygen: its files, its public line, its fingerprint and paramiko key."""

    def __init__(self, directory: Path, kind: str = "ed25519", bits: str = "") -> None:
        self.path = directory / f"id_{kind}{bits}_{os.urandom(4).hex()}"
        extra = ["-b", bits] if bits else []
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "e2e", "-f", str(self.path)],
            check=True,
        )
        self.public = Path(f"{self.path}.pub").read_text()
        listed = subprocess.run(
            ["ssh-keygen", "-lf", f"{self.path}.pub"], capture_output=True, text=True, check=True
        )
        self.fingerprint = listed.stdout.split()[1]

    def paramiko_key(self) -> paramiko.PKey:
        return paramiko.PKey.from_path(str(self.path))


def openssh(
    sshd: Sshd, user: str, identity: Path, command: str, stdin: str = "", code: str = ""
) -> subprocess.CompletedProcess[str]:
    """OpenSSH's ``ssh -i IDENTITY user@sshd COMMAND``, checking the host key, no agent;
    with ``code``, keyboard-interactive prompts are answered with it (through SSH_ASKPASS)."""
    known_hosts = identity.parent / "known_hosts"
    blob = sshd.host_key.get_base64()
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key.get_name()} {blob}\n")
    environment = {"PATH": "/usr/bin:/bin"}
    options = {
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "BatchMode": "no" if code else "yes",
        "NumberOfPasswordPrompts": "1",
        "UserKnownHostsFile": str(known_hosts),
        "StrictHostKeyChecking": "yes",
    }
    if code:
        askpass = identity.parent / "askpass"
        askpass.write_text(f"#!/bin/sh\necho {code}\n")
        os.chmod(askpass, 0o700)
        environment.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
    argv = ["ssh", "-F", "/dev/null", "-i", str(identity), "-p", str(sshd.port)]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return subprocess.run(
        [*argv, f"{user}@127.0.0.1", command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def private_file(tmp_path: Path, key: paramiko.PKey) -> Path:
    path = tmp_path / f"tenant_{os.urandom(4).hex()}"
    key.write_private_key_file(str(path))
    os.chmod(path, 0o600)
    return path


def test_a_key_added_logs_in_and_once_removed_is_refused_and_its_session_ends(
    keys_helper: Helper, ssh: Connect, ssh_site: SshSite, tmp_path: Path
) -> None:
    sshd = ssh_site.sshd
    own_key = private_file(tmp_path, ssh_site.tenants[ALICE].key)
    new = KeyPair(tmp_path)
    # the README's one line: the key from stdin, over OpenSSH's ssh
    added = openssh(sshd, ALICE, own_key, "keys add", stdin=new.public)
    assert added.returncode == 0, added
    assert f"added {new.fingerprint} (ssh-ed25519, 256 bits)" in added.stdout
    listed = ssh(ALICE).run("keys --json")
    assert listed.code == 0, listed
    assert [key["fingerprint"] for key in listed.json()["keys"]][-1] == new.fingerprint
    assert listed.json()["keys"][-1]["comment"] == "e2e"
    key_file = sshd.keys_dir / ALICE
    assert (key_file.stat().st_uid, key_file.stat().st_mode & 0o777) == (0, 0o644)

    logged_in = openssh(sshd, ALICE, new.path, "whoami --json")
    assert logged_in.returncode == 0, logged_in
    assert '"user": "vpss-alice"' in logged_in.stdout
    live = SshConnection.open(sshd, ALICE, new.paramiko_key())
    shell = live.terminal()
    shell.expect(f"{ALICE}@vpsshell>")

    removed = ssh(ALICE).run(f"keys remove {new.fingerprint}")
    assert removed.code == 0, removed
    assert f"removed {new.fingerprint}" in removed.out
    wait_until(
        lambda: not live.client.get_transport() or not live.client.get_transport().is_active(),
        15,
        "the session of the removed key is still open",
    )
    live.close()
    refused = openssh(sshd, ALICE, new.path, "whoami")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr, refused
    with pytest.raises(AssertionError, match="could not log in"):
        SshConnection.open(sshd, ALICE, new.paramiko_key())
    # the connection that removed it goes on, and the tenant's own key still logs in
    assert ssh(ALICE).run("whoami").code == 0
    assert openssh(sshd, ALICE, own_key, "whoami").returncode == 0
    changes = [
        (e["action"], e.get("key"), e["result"])
        for e in keys_helper.audit()
        if e["action"] in ("keys-add", "keys-remove")
    ]
    assert changes == [
        ("keys-add", new.fingerprint, "ok"),
        ("keys-remove", new.fingerprint, "ok"),
    ]


def test_keys_sshd_must_never_see_are_refused_and_the_file_stays(
    keys_helper: Helper, ssh: Connect, ssh_site: SshSite, tmp_path: Path
) -> None:
    key_file = ssh_site.sshd.keys_dir / CAROL
    before = key_file.read_bytes()
    good = KeyPair(tmp_path)
    blob = good.public.split()[1]
    dsa = KeyPair(tmp_path, "dsa")
    rsa_2048 = KeyPair(tmp_path, "rsa", "2048")
    connection = ssh(CAROL)
    refused = {
        f'command="/bin/bash" ssh-ed25519 {blob} x': "options",
        f"from=10.0.0.1,no-pty ssh-ed25519 {blob}": "options",
        f'restrict,permitopen="127.0.0.1:22" {good.public}': "options",
        dsa.public: "DSA keys are not accepted",
        rsa_2048.public: "at least 3072 bits",
        "ssh-ed25519 bm90IGEga2V5": "not a valid ssh-ed25519 key",
        "hello world": "not a key type accepted here",
        f"{good.public.strip()}\nssh-ed25519 {blob} second": "one key per line",
        "ssh-ed25519 " + "A" * 9000: "longer than 8192 bytes",
    }
    for line, why in refused.items():
        result = connection.run("keys add", stdin=line.encode())
        assert (result.code, why in result.err) == (64, True), (line[:60], result)
        assert key_file.read_bytes() == before
    # the key on the command line instead of stdin: the same checks
    assert connection.run(f"keys add {rsa_2048.public.strip()}").code == 64
    assert connection.run("keys add", stdin=good.public.encode()).code == 0
    duplicate = connection.run(f"keys add {good.public.strip()}")
    assert (duplicate.code, "already one of your keys" in duplicate.err) == (64, True), duplicate
    third = KeyPair(tmp_path)
    assert connection.run("keys add", stdin=third.public.encode()).code == 0
    one_too_many = connection.run("keys add", stdin=KeyPair(tmp_path).public.encode())
    assert one_too_many.code == 64 and f"you have {KEYS_PER_USER} keys" in one_too_many.err
    # the last key stays unless the admin allows otherwise
    for key in (good, third):
        assert connection.run(f"keys remove {key.fingerprint}").code == 0
    own = connection.run("keys --json").json()["keys"]
    assert len(own) == 1
    last = connection.run(f"keys remove {own[0]['fingerprint']}")
    assert last.code == 64 and "your last key" in last.err, last
    assert key_file.read_text().splitlines()[-1] == before.decode().splitlines()[-1]
    assert connection.run("whoami").code == 0


def code_at(secret_b32: str, at: float) -> str:
    secret = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    return totp_code(secret, at)


def wrong(code: str) -> str:
    return str((int(code) + 1) % 1000000).zfill(6)


def enrol(connection: SshConnection, users_file: Path) -> tuple[str, int]:
    """``totp enroll`` then ``totp confirm CODE``; the secret and the step confirmed."""
    enrolled = connection.run("totp enroll --json")
    assert enrolled.code == 0, enrolled
    reply = enrolled.json()
    secret = reply["secret"]
    assert reply["uri"].startswith("otpauth://totp/vpsshell%3Avpss-alice%40")
    assert len(reply["qr"]) > 10 and any("▀" in line or "▄" in line for line in reply["qr"])
    refused = connection.run(f"totp confirm {wrong(code_at(secret, time.time()))}")
    assert refused.code == 77, refused
    now = time.time()
    confirmed = connection.run(f"totp confirm {code_at(secret, now)}")
    assert confirmed.code == 0, confirmed
    assert re.search(r"^HOTP/T30/6 vpss-alice - [0-9a-f]{40}$", users_file.read_text(), re.M)
    assert (users_file.stat().st_uid, users_file.stat().st_mode & 0o777) == (0, 0o600)
    return secret, int(now // 30)


@contextmanager
def totp_sshd(
    site: SshSite, root: Path, users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Sshd]:
    """An sshd with the shipped second-factor block for the tenants' group and the README's
    pam_oath line, as a PAM service of its own (sshd's name is its PAM service)."""
    text = shipped_snippet(SSH_GROUP, site.sshd.keys_dir)
    assert SECOND_FACTOR_BLOCK in text, "the shipped snippet lost its second-factor block"
    enabled = SECOND_FACTOR_BLOCK.replace("#", "").replace("vpsshell-totp", SSH_GROUP)
    sshd = Sshd(root, text.replace(SECOND_FACTOR_BLOCK, enabled))
    service = f"vpsshell-e2e-totp-{os.getpid()}"
    link = root / service
    link.symlink_to(sshclient.SSHD)
    pam_file = Path("/etc/pam.d") / service
    pam_file.write_text(PAM_LINES.format(group=SSH_GROUP, users=users_file))
    monkeypatch.setattr(sshclient, "SSHD", str(link))
    try:
        yield sshd.start()
    finally:
        sshd.stop()
        pam_file.unlink()


def login_with_code(sshd: Sshd, key: paramiko.PKey, code: str) -> paramiko.Transport:
    """Key, then keyboard-interactive with ``code``; raises AuthenticationException."""
    transport = paramiko.Transport(("127.0.0.1", sshd.port))
    transport.start_client(timeout=15)
    assert transport.get_remote_server_key() == sshd.host_key
    remaining = transport.auth_publickey(ALICE, key)
    assert remaining == ["keyboard-interactive"], remaining
    prompts_seen: list[str] = []

    def answer(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        prompts_seen.extend(prompt for prompt, _ in prompts)
        return [code for _ in prompts]

    try:
        transport.auth_interactive(ALICE, answer)
    except paramiko.AuthenticationException as exc:
        transport.close()
        raise paramiko.AuthenticationException(
            f"{exc} (prompts {prompts_seen}); sshd says:\n{sshd.log_tail()}"
        ) from None
    assert any("OATH" in prompt or "assword" in prompt for prompt in prompts_seen), prompts_seen
    return transport


@pytest.mark.skipif(not os.path.exists(PAM_OATH), reason="libpam-oath is not installed")
def test_totp_login_needs_key_and_code_and_confirm_totp_guards_a_reboot(
    keys_helper: Helper,
    ssh: Connect,
    ssh_site: SshSite,
    open_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users_file = open_dir / "totp" / "users.oath"
    connection = ssh(ALICE)
    assert connection.run("totp --json").json()["enrolled"] is False
    secret, step = enrol(connection, users_file)
    assert connection.run("totp --json").json()["enrolled"] is True

    key = ssh_site.tenants[ALICE].key
    with totp_sshd(ssh_site, open_dir / "sshd-totp", users_file, monkeypatch) as sshd:
        with pytest.raises(paramiko.AuthenticationException):
            login_with_code(sshd, key, wrong(code_at(secret, time.time())))
        with pytest.raises(paramiko.SSHException):  # the key alone is not enough
            transport = paramiko.Transport(("127.0.0.1", sshd.port))
            transport.start_client(timeout=15)
            try:
                assert transport.auth_publickey(ALICE, key) == ["keyboard-interactive"]
                channel = transport.open_session(timeout=10)
                channel.exec_command("whoami")
            finally:
                transport.close()
        transport = login_with_code(sshd, key, code_at(secret, time.time()))
        try:
            channel = transport.open_session(timeout=15)
            channel.exec_command("whoami --json")
            out = channel.makefile("rb").read().decode()
            assert channel.recv_exit_status() == 0 and '"user": "vpss-alice"' in out, out
        finally:
            transport.close()
        # OpenSSH's ssh too; pam_oath takes each code once, so the next step's (window=1)
        identity = private_file(tmp_path, key)
        refused = openssh(sshd, ALICE, identity, "whoami", code=wrong(code_at(secret, time.time())))
        assert refused.returncode == 255 and "Permission denied" in refused.stderr, refused
        logged_in = openssh(sshd, ALICE, identity, "whoami", code=code_at(secret, time.time() + 30))
        assert logged_in.returncode == 0 and "vpss-alice" in logged_in.stdout, logged_in

    # confirm=totp: web1's reboot asks for a code; a wrong one is asked again
    started = connection.run("start web1")
    assert started.code == 0, started
    wait_until(
        lambda: connection.run("status web1 --json").json()["state"] == "running", 15, "web1 up"
    )
    shell = connection.terminal("reboot web1")
    shell.expect("reboot web1 needs a code from your authenticator app. Code: ")
    # a step after the one enrolment used (each step is accepted once), and not in the past
    right = code_at(secret, max(step + 1, int(time.time() // 30)) * 30)
    shell.send(wrong(right) + "\r")
    shell.expect("code not accepted. Code: ")
    shell.send(right + "\r")
    shell.expect("web1: rebooting")
    assert shell.exit_status() == 0
    reboots = [e for e in keys_helper.audit() if e["action"] == "reboot"]
    assert [(e["decision"], e.get("confirm"), e.get("confirmed")) for e in reboots] == [
        ("confirm", "totp", None),
        ("deny", "totp", None),
        ("allow", "totp", True),
    ]


def test_the_admin_adds_and_removes_a_tenants_key_with_the_same_checks(
    keys_helper: Helper, ssh: Connect, ssh_site: SshSite, tmp_path: Path
) -> None:
    sshd = ssh_site.sshd
    new = KeyPair(tmp_path)
    added = vpsshell_admin(keys_helper, "keys", "add", CAROL, stdin=new.public)
    assert added.code == 0, added
    assert f"added {new.fingerprint}" in added.out
    options = vpsshell_admin(keys_helper, "keys", "add", CAROL, f"no-pty {new.public}")
    assert options.code == AdminExit.USAGE and "options" in options.err, options
    listed = vpsshell_admin(keys_helper, "keys", "list", CAROL, "--json")
    assert [key["fingerprint"] for key in json.loads(listed.out)][-1] == new.fingerprint
    live = SshConnection.open(sshd, CAROL, new.paramiko_key())
    shell = live.terminal()
    shell.expect(f"{CAROL}@vpsshell>")
    own = ssh(CAROL)  # a session with carol's other key: the admin's removal ends it too
    assert own.run("whoami").code == 0
    removed = vpsshell_admin(keys_helper, "keys", "remove", CAROL, new.fingerprint)
    assert removed.code == 0, removed
    for connection in (live, own):
        wait_until(
            lambda c=connection: not c.client.get_transport().is_active(),  # type: ignore[misc]
            15,
            "a session of carol outlived the admin's removal",
        )
    with pytest.raises(AssertionError, match="could not log in"):
        SshConnection.open(sshd, CAROL, new.paramiko_key())
    last = json.loads(vpsshell_admin(keys_helper, "keys", "list", CAROL, "--json").out)
    assert len(last) == 1
    kept = vpsshell_admin(keys_helper, "keys", "remove", CAROL, last[0]["fingerprint"])
    assert kept.code == AdminExit.USAGE and "--allow-last" in kept.err, kept
    assert [
        (e["action"], e["key"]) for e in keys_helper.audit() if e["action"].startswith("admin:keys")
    ] == [("admin:keys-add", new.fingerprint), ("admin:keys-remove", new.fingerprint)]


def test_a_key_pasted_at_the_interactive_shells_prompt_is_added(
    keys_helper: Helper, ssh: Connect, tmp_path: Path
) -> None:
    new = KeyPair(tmp_path)
    shell = ssh(ALICE).terminal()
    shell.expect(f"{ALICE}@vpsshell>")
    shell.line("keys add", "Paste your public key")
    shell.send(new.public.strip() + "\r")
    shell.expect(f"added {re.escape(new.fingerprint)}")
    shell.line("keys", re.escape(new.fingerprint))
    shell.expect(f"2 of at most {KEYS_PER_USER} keys")
    shell.send("exit\r")
    assert shell.exit_status() == 0
