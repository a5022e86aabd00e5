"""Helpers of the Xen lab tests: dom0 commands, the tenants' shell, the lab's steps, timings.

See conftest.py in this directory for how a run uses the lab.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.host import CACHE
from lab.machine import DESTINATION, Machine
from lab_contract import DB1_UUID

REPO = Path(__file__).resolve().parents[2]
SHARE = CACHE / "share"  # wheels and the contract, read-only in dom0 at /mnt/host
SKIP_REASON = (
    "the Xen lab is off: VPSSHELL_XENLAB=1 boots Xen in QEMU (~5 min; run-tests sets it as root)"
)

VENV = "/tmp/vpsshell-venv"  # dom0's root fs is a full initramfs; /tmp is a tmpfs
CONFIG_DIR = "/etc/vpsshell/xen.d"
HELPER_CONFIG = "/etc/vpsshell/vpsshelld.toml"
HELPER_LOG = "/var/log/vpsshelld.log"
HELPER_PID = "/run/vpsshelld-test.pid"
OWNER, STRANGER = "xt-alice", "xt-bob"

TIMINGS: dict[str, float] = {}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.out[-3000:]}\nstderr: {self.err[-3000:]}"


@dataclass
class Lab:
    """The booted lab: commands in dom0 as root, the tenants' shell."""

    machine: Machine

    @property
    def ssh(self) -> list[str]:
        """``ssh`` and its options; the destination is ``DESTINATION``."""
        return self.machine.ssh_options()

    def run(self, command: str, timeout: float = 300, check: bool = True) -> Result:
        proc = subprocess.run(
            [*self.ssh, DESTINATION, command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"dom0: {command}\n{result}")
        return result

    def tenant_argv(self, user: str, line: str) -> str:
        """The dom0 command line that runs ``vpsshell -c LINE`` as ``user``, as sshd would."""
        return (
            f"runuser -u {user} -- env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=/ "
            f"{VENV}/bin/vpsshell -c {shlex.quote(line)}"
        )

    def vpsshell(self, user: str, line: str, timeout: float = 300) -> Result:
        return self.run(self.tenant_argv(user, line), timeout=timeout, check=False)

    def helper_log(self) -> str:
        return self.run(f"cat {HELPER_LOG} 2>/dev/null || true").out


HELPER_SOCKET = "/run/vpsshell/vpsshelld.sock"


def start_helper(lab: Lab) -> None:
    """Start vpsshelld in dom0 in the background (its log in HELPER_LOG, its pid in
    HELPER_PID) and wait until it listens."""
    lab.run(
        f"rm -f {HELPER_LOG}; setsid {VENV}/bin/vpsshelld --config {HELPER_CONFIG} "
        f"--foreground > {HELPER_LOG} 2>&1 < /dev/null & echo $! > {HELPER_PID}"
    )
    from harness import wait_until

    wait_until(
        lambda: lab.run(f"test -S {HELPER_SOCKET}", check=False).code == 0,
        60,
        "vpsshelld listening in dom0",
        interval=0.5,
    )


def _timed(label: str, work: Any) -> Any:
    began = time.monotonic()
    try:
        return work()
    finally:
        TIMINGS[label] = time.monotonic() - began


def _install(lab: Lab) -> None:
    # venv without pip (its ensurepip takes ~2 min under TCG); dom0's pip installs into it
    lab.run(
        f"rm -rf {VENV} && python3 -m venv --without-pip {VENV} && "
        f"python3 -m pip --python {VENV}/bin/python install -q --no-index "
        f"--find-links /mnt/host/wheels 'vpsshell[xen]' && chmod -R o+rX {VENV}",
        timeout=900,
    )


def _setup(lab: Lab) -> None:
    """Domain config files (two copies of the lab's PV guest), tenants, helper config."""
    lab.run(
        f"""set -e
        for dom in $(xl list | awk 'NR>2 {{print $1}}'); do xl destroy "$dom"; done
        mkdir -p {CONFIG_DIR} /etc/vpsshell/policy.d /var/log/vpsshell
        cd {CONFIG_DIR}
        sed 's/^name = .*/name = "web1"/' /etc/xen/xenlab-domu.cfg > web1.cfg
        sed 's/^name = .*/name = "db1"/' /etc/xen/xenlab-domu.cfg > db1.cfg
        echo 'uuid = "{DB1_UUID}"' >> db1.cfg
        cp web1.cfg 1234.cfg
        sed 's/web1/loose/' web1.cfg > loose.cfg && chmod 666 loose.cfg
        getent group vpsshell >/dev/null || groupadd vpsshell
        for u in {OWNER} {STRANGER}; do
          id "$u" >/dev/null 2>&1 || useradd -M -s /bin/false -G vpsshell "$u"
        done
        cp {VENV}/share/vpsshell/pam/vpsshell /etc/pam.d/vpsshell
        cat > {HELPER_CONFIG} <<'EOF'
state_dir = "/var/lib/vpsshell"
[backend]
type = "xen"
xl = "/usr/sbin/xl"
domain_config_dir = "{CONFIG_DIR}"
xenstore_socket = "/run/xenstored/socket"
host = "xenlab"
EOF
        cat > /etc/vpsshell/policy.d/10-lab.policy <<'EOF'
allow user:{OWNER}  @all     web1
allow user:{STRANGER}    @viewer  db1
EOF
        chmod 644 /etc/vpsshell/policy.d/10-lab.policy {HELPER_CONFIG}
        {VENV}/bin/vpsshelld --config {HELPER_CONFIG} --check-config
        """
    )
