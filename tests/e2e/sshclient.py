"""Real OpenSSH for end-to-end tests: a private ``sshd`` and paramiko clients of its tenants.

``Sshd`` runs Debian's ``/usr/sbin/sshd`` on a free 127.0.0.1 port with its own
``sshd_config``, host key, pid file and root-owned authorized-keys directory. Its config is laid
out like Debian's: the project's own ``sshd/vpsshell.conf`` is included first, exactly as
shipped except for the group name and the keys directory, then the global settings of Debian's
``/etc/ssh/sshd_config`` (``UsePAM yes``, ``X11Forwarding yes``, ``AcceptEnv LANG LC_*``, an
external ``sftp-server``). ``shipped_snippet(..., match_block=False)`` builds the same server
without the Match block: the control that proves the lockdown tests can fail.

``SshConnection`` is one tenant's paramiko connection, with ``run`` (``ssh host COMMAND``) and
``terminal`` (a pty session read with ``expect``, answering the terminal queries a real
terminal answers). The host key is checked: a client never trusts an unknown key.
Readiness is always polled (``harness.wait_until``), never slept for.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from harness import wait_until

REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SHIPPED_SNIPPET = REPO / "sshd" / "vpsshell.conf"
SHIPPED_GROUP_LINE = "Match Group vpsshell\n"
SHIPPED_KEYS_DIR = "/etc/vpsshell/authorized_keys/"

# Debian 12's /etc/ssh/sshd_config, minus comments: the include comes first, so the Match block
# in it ends with the included file and these settings stay global.
MAIN_CONFIG = """\
Include {snippet}
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {pid_file}
KbdInteractiveAuthentication no
PasswordAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp {sftp_server}
"""

# CSI and OSC sequences, other two-byte escapes, carriage returns: what a screen would not show
_ESCAPES = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|\r"
)
CURSOR_POSITION_REQUEST = b"\x1b[6n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def shipped_snippet(group: str, keys_dir: Path, *, match_block: bool = True) -> str:
    """``sshd/vpsshell.conf`` for ``group`` with keys in ``keys_dir``, as the admin installs it.

    With ``match_block=False`` only the keys directory is kept, as a global setting: the
    tenants still log in, and nothing else of the shipped lockdown applies.
    """
    text = SHIPPED_SNIPPET.read_text()
    # a shipped file that no longer has these lines must break the suite, not test less
    assert SHIPPED_GROUP_LINE in text, f"no '{SHIPPED_GROUP_LINE.strip()}' in {SHIPPED_SNIPPET}"
    assert SHIPPED_KEYS_DIR in text, f"no {SHIPPED_KEYS_DIR} in {SHIPPED_SNIPPET}"
    if not match_block:
        return f"AuthorizedKeysFile {keys_dir}/%u\n"
    text = text.replace(SHIPPED_GROUP_LINE, f"Match Group {group}\n")
    return text.replace(SHIPPED_KEYS_DIR, f"{keys_dir}/")


class Sshd:
    """A private sshd on 127.0.0.1; every file of it lives in ``directory`` (root, 0755)."""

    def __init__(self, directory: Path, snippet: str) -> None:
        self.dir = directory
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)  # sshd's StrictModes: no writable parent of the keys dir
        self.keys_dir = directory / "authorized_keys"
        self.keys_dir.mkdir(mode=0o755)
        host_key = directory / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(host_key)],
            check=True,
        )
        kind, blob = (directory / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.host_key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        self.port = free_port()
        self.pid_file = directory / "sshd.pid"
        self.log = directory / "sshd.log"
        self.snippet = directory / "vpsshell.conf"
        self.snippet.write_text(snippet)
        self.config = directory / "sshd_config"
        self.config.write_text(
            MAIN_CONFIG.format(
                snippet=self.snippet,
                port=self.port,
                host_key=host_key,
                pid_file=self.pid_file,
                sftp_server=SFTP_SERVER,
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sshd:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        checked = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True)
        assert checked.returncode == 0, checked.stderr.decode()
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        wait_until(self._listening, 15, f"sshd never listened on 127.0.0.1:{self.port}")
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"sshd exited: {self.log.read_text()[-2000:]}")
        if not self.pid_file.exists():  # written once the listening socket is bound
            return False
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as probe:
            return probe.recv(64).startswith(b"SSH-2.0-")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def authorize(self, user: str, key: paramiko.PKey) -> None:
        """The admin's step: the tenant's public key in a root-owned file, mode 0644."""
        path = self.keys_dir / user
        path.write_text(f"{key.get_name()} {key.get_base64()} {user}@e2e\n")
        os.chmod(path, 0o644)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class SshResult:
    """What ``ssh host COMMAND`` gives back: exit status, stdout and stderr."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Terminal:
    """A session channel with a pty, read like a terminal: ``expect`` text, ``send`` keys.

    Matching is on the text a screen would show (escape sequences and carriage returns
    removed). Cursor position requests get an answer, as from any terminal emulator.
    """

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self.raw = b""
        self._seen = 0  # how much of text() earlier expects consumed

    def text(self) -> str:
        return _ESCAPES.sub(b"", self.raw).decode("utf-8", errors="replace")

    def _read(self, timeout: float) -> bool:
        """Read what arrives within ``timeout``; False once the channel has no more to give."""
        ready, _, _ = select.select([self.channel], [], [], timeout)
        if not ready:
            return True
        data = self.channel.recv(65536)
        if not data:
            return False
        if CURSOR_POSITION_REQUEST in data:
            self.channel.sendall(b"\x1b[1;1R" * data.count(CURSOR_POSITION_REQUEST))
        self.raw += data
        return True

    def expect(self, pattern: str, timeout: float = 10) -> str:
        """Wait for the regex ``pattern`` in the output after the last match; the text up to
        and including the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        open_ = True
        while True:
            text = self.text()
            found = regex.search(text, self._seen)
            if found:
                before = text[self._seen : found.end()]
                self._seen = found.end()
                return before
            left = deadline - time.monotonic()
            if left <= 0 or not open_:
                state = "timed out" if open_ else "the session ended"
                raise AssertionError(
                    f"{state} waiting for {pattern!r}; after the last match:\n{text[self._seen :]}"
                )
            open_ = self._read(min(left, 1.0))

    def send(self, data: str | bytes) -> None:
        self.channel.sendall(data.encode() if isinstance(data, str) else data)

    def line(self, line: str, expect: str, timeout: float = 10) -> str:
        self.send(line + "\r")
        return self.expect(expect, timeout)

    def exit_status(self, timeout: float = 15) -> int:
        """Read to the end of the session; its exit status."""
        deadline = time.monotonic() + timeout
        while self._read(max(0.0, min(deadline - time.monotonic(), 1.0))):
            if time.monotonic() > deadline:
                raise AssertionError(f"the session did not end:\n{self.text()[-2000:]}")
        wait_until(self.channel.exit_status_ready, 5, "no exit status after the end of output")
        return int(self.channel.recv_exit_status())


@dataclass
class SshConnection:
    """One tenant's SSH connection (paramiko), checked against the server's host key."""

    client: paramiko.SSHClient
    user: str
    channels: list[paramiko.Channel] = field(default_factory=list)

    @classmethod
    def open(cls, sshd: Sshd, user: str, key: paramiko.PKey) -> SshConnection:
        client = paramiko.SSHClient()
        client.get_host_keys().add(
            f"[127.0.0.1]:{sshd.port}", sshd.host_key.get_name(), sshd.host_key
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                "127.0.0.1",
                port=sshd.port,
                username=user,
                pkey=key,
                look_for_keys=False,
                allow_agent=False,
                timeout=15,
                auth_timeout=15,
                banner_timeout=15,
            )
        except paramiko.SSHException as exc:  # sshd's log says why; the client never knows
            raise AssertionError(f"{user} could not log in: {exc!r}\n{sshd.log_tail()}") from exc
        return cls(client, user)

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        assert transport is not None and transport.is_active()
        return transport

    def session(self) -> paramiko.Channel:
        channel = self.transport.open_session(timeout=15)
        self.channels.append(channel)
        return channel

    def run(
        self,
        command: str,
        *,
        environment: dict[str, str] | None = None,
        stdin: bytes = b"",
        timeout: float = 30,
    ) -> SshResult:
        """``ssh host COMMAND`` without a pty: exit status and both streams, read to the end."""
        channel = self.session()
        channel.settimeout(timeout)
        if environment:
            channel.update_environment(environment)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
        out = channel.makefile("rb").read()
        err = channel.makefile_stderr("rb").read()
        code = channel.recv_exit_status()
        channel.close()
        return SshResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def terminal(
        self,
        command: str | None = None,
        *,
        environment: dict[str, str] | None = None,
        width: int = 100,
        height: int = 30,
    ) -> Terminal:
        """A pty session: the login shell (``ssh -t host``) or ``ssh -t host COMMAND``."""
        channel = self.session()
        channel.get_pty(term="xterm-256color", width=width, height=height)
        if environment:
            channel.update_environment(environment)
        if command is None:
            channel.invoke_shell()
        else:
            channel.exec_command(command)
        return Terminal(channel)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.client.close()


def processes_of(uid: int) -> list[int]:
    """Pids of the processes ``uid`` runs (real uid), as root sees them in /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                found.append(int(entry))
        except OSError:
            continue
    return found


def environ_of(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (empty if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def process_with_env(
    uid: int, key: str, value: str, timeout: float = 10
) -> tuple[int, dict[str, str]]:
    """The process of ``uid`` whose environment has ``key=value``; (pid, its environment)."""

    def find() -> tuple[int, dict[str, str]] | None:
        for pid in processes_of(uid):
            env = environ_of(pid)
            if env.get(key) == value:
                return pid, env
        return None

    found: tuple[int, dict[str, str]] = wait_until(find, timeout, f"no process of {uid} has {key}")
    return found
