"""Shared test helpers: polling, real OS users, a real vpsshelld subprocess, running the shell.

Nothing here fakes a part of vpsshell: the helper is the installed ``vpsshelld`` started as a
process, tenants are OS users created with ``useradd``, and the shell is the installed
``vpsshell`` run as those users with ``runuser``.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
TEAM_GROUP = "vpst-team"
USERS = ("vpst-alice", "vpst-bob", "vpst-carol", "vpst-mallory")


def wait_until(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``message``.
    ``interval`` suits the predicate's cost (a command over ssh into the Xen lab wants more)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message}")
        time.sleep(interval)


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_users() -> None:
    """Create the test tenants (idempotent); carol and mallory are in the team group."""
    try:
        grp.getgrnam(TEAM_GROUP)
    except KeyError:
        subprocess.run(["groupadd", TEAM_GROUP], check=True)
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/bin/false", user], check=True)
    for user in ("vpst-carol", "vpst-mallory"):
        subprocess.run(["usermod", "-aG", TEAM_GROUP, user], check=True)


def remove_users() -> None:
    for user in USERS:
        subprocess.run(["userdel", user], check=False, capture_output=True)
    subprocess.run(["groupdel", TEAM_GROUP], check=False, capture_output=True)


SIM_DOMAINS = """
[[backend.domains]]
name = "web1"
vcpus = 1
memory_mib = 512
boot_seconds = 0.5
shutdown_seconds = 0.5

[[backend.domains]]
name = "web2"
vcpus = 2
memory_mib = 1024
boot_seconds = 0.5
shutdown_seconds = 3

[[backend.domains]]
name = "web3"
vcpus = 1
memory_mib = 256
boot_seconds = 0.5

[[backend.domains]]
name = "web4"
vcpus = 1
memory_mib = 256
boot_seconds = 0.5

[[backend.domains]]
name = "db1"
vcpus = 2
memory_mib = 2048
boot_seconds = 0.5

[[backend.domains]]
name = "stubborn"
vcpus = 1
memory_mib = 256
boot_seconds = 0.2
shutdown_seconds = 600
"""

DEFAULT_POLICY = """\
# test tenants
allow user:vpst-alice  @operator web1 web2 stubborn
allow user:vpst-alice  sysrq     web1
allow group:vpst-team  @operator db1
deny  user:vpst-mallory *        *   reason="suspended"
allow user:vpst-bob    status    web3 expires=2020-01-01
allow user:vpst-bob    @viewer   web4 expires=2999-12-31
"""


def libvirt_backend(hosts: list[tuple[str, str]], **keys: object) -> str:
    """A ``[backend]`` table of the libvirt backend naming these (label, uri) hosts, with
    ``keys`` (``timeout_seconds=5``...) in the table."""
    lines = ["[backend]", 'type = "libvirt"', *(f"{k} = {json.dumps(v)}" for k, v in keys.items())]
    for name, uri in hosts:
        lines += ["", "[[backend.hosts]]", f"name = {json.dumps(name)}", f"uri = {json.dumps(uri)}"]
    return "\n".join(lines) + "\n"


class Helper:
    """A real ``vpsshelld`` process with its own config, policy dir, audit log and sockets."""

    def __init__(
        self,
        root: Path,
        policy: str = DEFAULT_POLICY,
        extra_config: str = "",
        requests_per_minute: int = 100000,
        extra_limits: str = "",
        connections_per_minute: int = 100000,
    ) -> None:
        self.root = root
        self.policy_dir = root / "policy.d"
        self.socket = root / "run" / "vpsshelld.sock"
        self.admin_socket = root / "run" / "admin.sock"
        self.audit_log = root / "audit.jsonl"
        self.hooks_dir = root / "hooks.d"
        self.config = root / "vpsshelld.toml"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "helper.log"
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        self.policy_dir.mkdir(mode=0o755, exist_ok=True)
        self.write_policy("10-tenants.policy", policy)
        group = TEAM_GROUP if is_root() else grp.getgrgid(os.getgid()).gr_name
        self.config.write_text(
            textwrap.dedent(f"""\
            socket = "{self.socket}"
            socket_group = "{group}"
            admin_socket = "{self.admin_socket}"
            policy_dir = "{self.policy_dir}"
            audit_log = "{self.audit_log}"
            state_dir = "{root / "state"}"
            console_log_dir = "{root / "console"}"
            hooks_dir = "{self.hooks_dir}"
            policy_poll_seconds = 0.2
            {extra_config}
            [limits]
            requests_per_minute = {requests_per_minute}
            connections_per_minute = {connections_per_minute}
            {extra_limits}

            [backend]
            type = "sim"
            """)
            + SIM_DOMAINS
        )

    def set_backend(self, table: str) -> None:
        """Replace the config's ``[backend]`` table (its last part) with ``table``, for a
        helper not started yet."""
        config = self.config.read_text()
        self.config.write_text(config[: config.index("[backend]")] + table)

    def write_policy(self, name: str, text: str, mode: int = 0o644) -> Path:
        path = self.policy_dir / name
        tmp = self.policy_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        return path

    def start(self, wrapper: tuple[str, ...] = ()) -> Helper:
        """Start it (under ``wrapper``, e.g. ``("faketime", "2026-12-31 23:59:50")``)."""
        self.process = subprocess.Popen(
            [*wrapper, str(BIN / "vpsshelld"), "--config", str(self.config), "--foreground"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 15, f"vpsshelld never answered on {self.socket}")
        # tenants outside the socket group still need to connect in these tests
        os.chmod(self.socket, 0o666)
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"vpsshelld exited: {self.log.read_text()[-2000:]}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket))
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def admin(self, op: str, **args: Any) -> Any:
        from vpsshell.client import HelperClient

        client = HelperClient(str(self.admin_socket))
        try:
            return client.call(op, args)
        finally:
            client.close()


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


def vpsshell_as(
    user: str | None,
    helper: Helper | None,
    *argv: str,
    env: dict[str, str] | None = None,
    program: Path | None = None,
    stdin: str | None = None,
) -> Result:
    """Run the installed ``vpsshell ARGV...`` as ``user`` (None: the current user)."""
    environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if helper is not None:
        environment["VPSSHELL_SOCKET"] = str(helper.socket)
    environment.update(env or {})
    command = [str(program or BIN / "vpsshell"), *argv]
    if user is not None:
        command = (
            ["runuser", "-u", user, "--", "env", "-i"]
            + [f"{k}={v}" for k, v in environment.items()]
            + command
        )
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment if user is None else None,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    return Result(proc)


def run(user: str, helper: Helper, line: str) -> Result:
    return vpsshell_as(user, helper, "-c", line)


def copy_tree_readable(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def python_as(user: str, script: str, *args: str) -> list[str]:
    """argv running ``script`` with the test venv's Python (isolated) as ``user``: a
    hand-written client, for what the shell itself would never send."""
    return ["runuser", "-u", user, "--", str(BIN / "python"), "-I", "-c", script, *args]


def state_of(helper: Helper, user: str, domain: str) -> str:
    result = run(user, helper, f"status {domain} --json")
    assert result.code == 0, result
    return str(result.json()["state"])


def start_and_wait(helper: Helper, user: str, domain: str) -> None:
    """``start DOMAIN`` as ``user``, then wait until it is running."""
    started = run(user, helper, f"start {domain}")
    assert started.code == 0, started
    wait_until(lambda: state_of(helper, user, domain) == "running", 10, f"{domain} running")


def console_as(helper: Helper, user: str, domain: str, *options: str) -> Any:
    """The real ``vpsshell -c 'console DOMAIN ...'`` as ``user`` on a pty (a pexpect.spawn)."""
    import pexpect

    command = " ".join(["console", domain, *options])
    return pexpect.spawn(
        "runuser",
        ["-u", user, "--", "env", f"VPSSHELL_SOCKET={helper.socket}", "TERM=xterm"]
        + [str(BIN / "vpsshell"), "-c", command],
        timeout=15,
    )


def vpsshell_admin(
    helper: Helper,
    *argv: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Result:
    """The installed ``vpsshell-admin ARGV...`` against ``helper``'s config, as root."""
    proc = subprocess.run(
        [str(BIN / "vpsshell-admin"), "--config", str(helper.config), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})},
    )
    return Result(proc)


def exit_while_frozen(helper: Helper, client: subprocess.Popen[bytes], timeout: float) -> Any:
    """Stop ``helper`` (SIGSTOP: there, silent, its sockets open), wait up to ``timeout`` s for
    ``client`` to give up, let the helper go on; returns the client's exit code and stderr."""
    assert helper.process is not None and client.stderr is not None
    helper.process.send_signal(signal.SIGSTOP)
    try:
        code = client.wait(timeout)
    finally:
        helper.process.send_signal(signal.SIGCONT)
    return code, client.stderr.read().decode(errors="replace")
