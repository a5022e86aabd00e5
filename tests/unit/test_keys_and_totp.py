"""Tenants' SSH keys and second factor, without a helper: checking a key line, the key file,
TOTP codes (RFC 6238's own test vectors), pam_oath's users file, and the ``keys`` policy action.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vpsshell.daemon.keys import KeyFile, KeyRefused, parse_public_key
from vpsshell.daemon.totp import TotpChecker, UsersFile, matching_step, totp_code
from vpsshell.policy import parse_policy

MAX = 8192


def keygen(tmp_path: Path, kind: str, bits: str = "", comment: str = "me@laptop") -> str:
    path = tmp_path / f"key-{kind}-{bits}-{uuid.uuid4().hex[:8]}"
    extra = ["-b", bits] if bits else []
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return (tmp_path / f"{path.name}.pub").read_text()


def fingerprint_by_ssh_keygen(line: str, tmp_path: Path) -> str:
    pub = tmp_path / "fp.pub"
    pub.write_text(line)
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True)
    return out.stdout.split()[1]


@pytest.mark.parametrize(
    ("kind", "bits"), [("ed25519", ""), ("ecdsa", "256"), ("ecdsa", "521"), ("rsa", "3072")]
)
def test_accepted_keys_are_written_back_as_type_base64_comment(
    tmp_path: Path, kind: str, bits: str
) -> None:
    line = keygen(tmp_path, kind, bits)
    key = parse_public_key(line, MAX)
    assert key.line == line.strip()
    assert key.fingerprint == fingerprint_by_ssh_keygen(line, tmp_path)
    assert key.comment == "me@laptop"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('command="/bin/sh" ssh-ed25519 {blob} x', "options"),
        ("from=10.0.0.1 ssh-ed25519 {blob}", "options"),
        ("no-pty,permitopen=1.2.3.4:22 ssh-ed25519 {blob}", "options"),
        ("ssh-ed25519", "base64 part is missing"),
        ("ssh-ed25519 !!!notbase64", "not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==", "not a valid ssh-ed25519 key"),
        ("ssh-ed25519 {blob}AAAA", "not a valid ssh-ed25519 key"),  # bytes after the key
        ("ssh-rsa {blob}", "not a valid ssh-rsa key"),  # an ed25519 blob labelled RSA
        ("ssh-ed25519 {blob}\nssh-ed25519 {blob}", "one key per line"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
        ("ssh-ed25519-cert-v01@openssh.com {blob}", "certificates"),
        ("sk-ssh-ed25519@openssh.com {blob}", "not a key type accepted"),
        ("", "no key given"),
    ],
)
def test_refused_key_lines_say_why(tmp_path: Path, line: str, why: str) -> None:
    blob = keygen(tmp_path, "ed25519").split()[1]
    with pytest.raises(KeyRefused, match=why):
        parse_public_key(line.format(blob=blob), MAX)


def test_weak_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyRefused, match="at least 3072 bits .this one has 2048"):
        parse_public_key(keygen(tmp_path, "rsa", "2048"), MAX)
    with pytest.raises(KeyRefused, match="DSA keys are not accepted"):
        parse_public_key(keygen(tmp_path, "dsa"), MAX)


def test_a_line_over_the_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    line = keygen(tmp_path, "ed25519", comment="c" * 500)
    assert parse_public_key(line, MAX).comment == "c" * 200  # comments are clipped
    with pytest.raises(KeyRefused, match="longer than 300 bytes"):
        parse_public_key(line, 300)


def test_comment_control_characters_are_dropped(tmp_path: Path) -> None:
    blob = keygen(tmp_path, "ed25519").split()[1]
    key = parse_public_key(f"ssh-ed25519 {blob} evil\x1b[2Jname\x07", MAX)
    assert key.comment == "evil[2Jname"


def test_key_file_add_remove_limits_and_admins_lines(tmp_path: Path) -> None:
    keys_dir = tmp_path / "authorized_keys"
    keys_dir.mkdir()
    admin_line = 'restrict,command="/bin/true" ' + keygen(tmp_path, "ed25519").strip()
    (keys_dir / "alice").write_text(f"# the admin's\n{admin_line}\n")
    key_file = KeyFile(str(keys_dir), "alice", max_keys=3, max_line_bytes=MAX)
    first = key_file.add(keygen(tmp_path, "ecdsa", "256"))
    with pytest.raises(KeyRefused, match="already one of your keys"):
        key_file.add(first.line)
    second = key_file.add(keygen(tmp_path, "ed25519", comment="phone"))
    with pytest.raises(KeyRefused, match="you have 3 keys"):
        key_file.add(keygen(tmp_path, "ed25519"))
    listed = key_file.entries()
    assert [e.key.fingerprint if e.key else None for e in listed] == [
        None,
        first.fingerprint,
        second.fingerprint,
    ]
    assert listed[0].line == admin_line  # kept as the admin wrote it, options and all
    assert listed[1].added is not None and listed[1].added.endswith("Z")
    stat = os.stat(keys_dir / "alice")
    assert (stat.st_mode & 0o777, stat.st_uid) == (0o644, os.geteuid())
    key_file.remove(first.fingerprint, allow_last=False)
    with pytest.raises(KeyRefused, match="not one of your keys"):
        key_file.remove(first.fingerprint, allow_last=False)
    assert [e.line for e in key_file.entries()] == [admin_line, second.line]
    assert sorted(os.listdir(keys_dir)) == ["alice"]  # no temporary file left behind


def test_the_last_key_is_removed_only_if_the_admin_allows(tmp_path: Path) -> None:
    key_file = KeyFile(str(tmp_path), "bob", max_keys=5, max_line_bytes=MAX)
    only = key_file.add(keygen(tmp_path, "ed25519"))
    with pytest.raises(KeyRefused, match="your last key"):
        key_file.remove(only.fingerprint, allow_last=False)
    key_file.remove(only.fingerprint, allow_last=True)
    assert key_file.entries() == []


def test_user_names_that_are_paths_are_refused(tmp_path: Path) -> None:
    for name in ("../etc", ".hidden", "a/b", ""):
        with pytest.raises(Exception, match="not a user name"):
            KeyFile(str(tmp_path), name, max_keys=1, max_line_bytes=MAX)


def test_totp_codes_are_rfc_6238s_test_vectors() -> None:
    secret = b"12345678901234567890"  # RFC 6238, Appendix B (SHA1)
    assert totp_code(secret, 59, digits=8) == "94287082"
    assert totp_code(secret, 1111111109, digits=8) == "07081804"
    assert totp_code(secret, 20000000000, digits=8) == "65353130"
    assert matching_step(secret, totp_code(secret, 1111111109), 1111111109 + 30) == 37037036
    assert matching_step(secret, totp_code(secret, 1111111109), 1111111109 + 90) is None
    assert matching_step(secret, "12345a", 59) is None


def test_users_file_keeps_other_lines_and_is_root_only(tmp_path: Path) -> None:
    path = tmp_path / "users.oath"
    path.write_text("HOTP/T30/6 other - 00ff 12 2026-01-01T00:00:00L\n")
    users = UsersFile(str(path))
    users.set_secret("alice", b"\x01\x02")
    users.set_secret("alice", b"\x03\x04")
    assert path.read_text() == (
        "HOTP/T30/6 other - 00ff 12 2026-01-01T00:00:00L\nHOTP/T30/6 alice - 0304\n"
    )
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert users.secret_of("alice") == b"\x03\x04" and users.secret_of("bob") is None


def test_enrolment_needs_a_code_of_the_new_secret_and_codes_are_used_once(
    tmp_path: Path,
) -> None:
    import time

    users = UsersFile(str(tmp_path / "users.oath"))
    checker = TotpChecker(users, attempts=2, lockout_seconds=60)
    with pytest.raises(LookupError):
        checker.finish(1000, "alice", "123456")
    secret = checker.begin(1000)
    wrong = str((int(totp_code(secret, time.time())) + 1) % 1000000).zfill(6)
    assert not checker.finish(1000, "alice", wrong)
    assert checker.finish(1000, "alice", totp_code(secret, time.time()))
    assert users.secret_of("alice") == secret
    # the step just used is not accepted again; the next one is
    assert not checker.check(1000, "alice", totp_code(secret, time.time()))
    assert checker.locked_for(1000) == 0
    assert not checker.check(1000, "alice", wrong)
    assert checker.locked_for(1000) > 0  # two failures in a row: locked out
    assert base64.b32encode(secret)  # a real secret, 160 bits
    assert len(secret) == 20


def test_keys_is_decided_per_user_and_implies_nothing_on_domains() -> None:
    policy = parse_policy(
        "allow group:tenants keys *\n"
        "allow user:alice @operator web1\n"
        "allow user:carol keys web9\n"
        "deny user:mallory keys *\n"
        "allow user:dave keys * confirm=totp\n"
    )
    assert policy.errors == []
    assert policy.decide("alice", ["tenants"], "keys", "").allowed
    assert not policy.decide("alice", [], "keys", "").allowed  # @operator does not hold keys
    assert policy.decide("carol", [], "keys", "").allowed  # domains do not matter for keys
    assert not policy.decide("carol", [], "status", "web9").allowed  # and it shows no domain
    assert not policy.decide("bob", ["tenants"], "status", "web1").allowed
    assert not policy.decide("mallory", ["tenants"], "keys", "").allowed  # deny wins
    assert policy.decide("dave", [], "keys", "").confirm == "totp"
    errors = parse_policy("allow user:a keys,status *\n").errors
    assert errors and "only allowed in deny rules and in grants of keys alone" in str(errors[0])


def test_the_tenant_shell_never_loads_paramiko() -> None:
    script = (
        "import sys, vpsshell.shell.launch, vpsshell.shell.oneshot, vpsshell.shell.session\n"
        "from vpsshell.shell.commands import VERBS\n"
        "assert 'keys' in VERBS and 'totp' in VERBS\n"
        "print('paramiko' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_ending_sessions_never_signals_root_processes() -> None:
    """Root is no tenant: a key removed by root (a test, a mistake) must not stop the host."""
    from vpsshell.daemon.keys import end_sessions

    assert end_sessions(0, os.getpid()) == 0
