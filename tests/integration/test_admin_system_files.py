"""The shipped system files, checked by the tools that will read them: sshd, systemd, PAM.

sshd must accept the snippet and apply it to the tenants' group only (``sshd -T`` shows the
effective settings per user); systemd must accept the unit; the PAM service's includes must
exist on this (Debian) system; ``vpsshell-admin install`` run as a real process must put all
of it in place idempotently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import BIN, TEAM_GROUP

ROOT = Path(__file__).resolve().parents[2]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_config(tmp: Path, group: str) -> Path:
    key = tmp / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    snippet = tmp / "vpsshell.conf"
    text = (ROOT / "sshd/vpsshell.conf").read_text()
    snippet.write_text(text.replace("Match Group vpsshell\n", f"Match Group {group}\n"))
    main = tmp / "sshd_config"
    # like Debian's sshd_config: the include first, global settings after it
    main.write_text(
        f"HostKey {key}\nInclude {snippet}\nPasswordAuthentication no\n"
        "AcceptEnv LANG LC_*\nSubsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    return main


def effective(config: Path, user: str) -> dict[str, str]:
    done = subprocess.run(
        [SSHD, "-T", "-f", str(config), "-C", f"user={user},host=client,addr=192.0.2.1"],
        capture_output=True,
        text=True,
        check=True,
    )
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    return settings


@pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server is not installed")
def test_sshd_accepts_the_snippet_and_applies_it_to_tenants_only(
    tenants: None, open_dir: Path
) -> None:
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd -t wants its privsep dir
    config = sshd_config(open_dir, TEAM_GROUP)
    done = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    tenant = effective(config, "vpst-carol")  # in the group
    for key, value in {
        "authorizedkeysfile": "/etc/vpsshell/authorized_keys/%u",
        "disableforwarding": "yes",
        "allowtcpforwarding": "no",
        "allowstreamlocalforwarding": "no",
        "allowagentforwarding": "no",
        "x11forwarding": "no",
        "permittunnel": "no",
        "permituserrc": "no",
        "permittty": "yes",
        "passwordauthentication": "no",  # the global setting after the include still applies
    }.items():
        assert tenant[key] == value, key
    other = effective(config, "vpst-alice")  # not in the group
    assert other["permituserrc"] == "yes"
    assert other["allowtcpforwarding"] == "yes"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(open_dir: Path) -> None:
    unit = open_dir / "vpsshelld.service"
    text = (ROOT / "systemd/vpsshelld.service").read_text()
    assert "ExecStart=/usr/local/sbin/vpsshelld --foreground" in text
    unit.write_text(text.replace("/usr/local/sbin/vpsshelld", str(BIN / "vpsshelld")))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_pam_service_includes_exist() -> None:
    includes = re.findall(r"^@include\s+(\S+)", (ROOT / "pam/vpsshell").read_text(), re.M)
    assert includes == ["common-auth", "common-account"]
    if not os.path.exists("/etc/pam.d/common-auth"):
        pytest.skip("not a Debian-style PAM layout")
    assert all(os.path.exists(f"/etc/pam.d/{name}") for name in includes)


def test_install_puts_the_shipped_files_in_place(open_dir: Path) -> None:
    root = open_dir / "root"

    def install(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "vpsshell-admin"), "install", "--root", str(root), "--sshd", *extra],
            capture_output=True,
            text=True,
            check=True,
        )

    first = install()
    assert "would" not in first.stdout
    shipped = {
        "etc/pam.d/vpsshell": "pam/vpsshell",
        "etc/ssh/sshd_config.d/vpsshell.conf": "sshd/vpsshell.conf",
        "usr/local/share/man/man8/vpsshelld.8": "man/vpsshelld.8",
    }
    for installed, source in shipped.items():
        assert (root / installed).read_text() == (ROOT / source).read_text(), installed
    first_line = (root / "usr/local/bin/vpsshell").read_text().splitlines()[0]
    assert first_line.startswith(f"#!{BIN}/python") and first_line.endswith(" -I")
    second = install()
    lines = second.stdout.splitlines()
    assert lines[-2] == "0 change(s) made"
    verbs = {line.split()[0] for line in lines[:-2]}
    assert "unchanged" in verbs and verbs <= {"unchanged", "skipped"}, second.stdout
