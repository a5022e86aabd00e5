"""A real terminal for end-to-end tests: the installed ``vpsshell`` in a tmux pane, as a tenant.

tmux gives the shell a real pty and gives the test the rendered screen (what a person would
see, after the terminal interpreted every escape sequence), the pane title (which an escape
sequence could change), the exit status, and a way to send keys, raw bytes and bracketed
pastes. Every tmux server is private to one test (its own socket in a temp dir).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness import BIN, Helper, wait_until

TMUX_CONF = """\
set -g remain-on-exit on
set -g status off
set -g history-limit 5000
"""


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` (S sleeping, T stopped...), or "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _descendants(root: int) -> list[int]:
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    found: list[int] = []
    frontier = {root}
    while frontier:
        children = [pid for pid in pids if _parent(pid) in frontier]
        found.extend(children)
        frontier = set(children)
    return found


class TmuxShell:
    """``vpsshell`` with no arguments (interactive) run by ``user`` in a fresh tmux pane."""

    def __init__(
        self,
        user: str,
        helper: Helper,
        *,
        env: dict[str, str] | None = None,
        width: int = 100,
        height: int = 24,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vpsshell-tmux-"))
        os.chmod(self.dir, 0o755)
        self.socket = self.dir / "tmux.sock"
        conf = self.dir / "tmux.conf"
        conf.write_text(TMUX_CONF)
        environment = {
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
            "PATH": "/usr/bin:/bin",
            "VPSSHELL_SOCKET": str(helper.socket),
        }
        environment.update(env or {})
        command = ["runuser", "-u", user, "--", "env", "-i"]
        command += [f"{key}={value}" for key, value in environment.items()]
        command.append(str(BIN / "vpsshell"))
        # the exit status goes to a file: tmux's own record of it (pane_dead_status) is
        # sometimes missing when the pane's process exits right after its child
        self.status_file = self.dir / "status"
        wrapper = ["sh", "-c", f'"$@"; echo $? > {self.status_file}', "sh", *command]
        self.tmux(
            "-f",
            str(conf),
            "new-session",
            "-d",
            "-x",
            str(width),
            "-y",
            str(height),
            "--",
            *wrapper,
        )
        self.user = user
        self.height = height

    def tmux(self, *args: str, input: bytes | None = None) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            input=input,
            timeout=15,
            check=True,
        )
        return result.stdout.decode("utf-8", errors="replace")

    # -- what the tenant sees ---------------------------------------------------------------

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def lines(self) -> list[str]:
        return self.screen().rstrip("\n").split("\n")

    def toolbar(self) -> str:
        """The bottom row of the pane, where the shell draws its toolbar."""
        return self.screen().split("\n")[self.height - 1]

    def coloured_screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-e")

    def pane_status(self) -> str:
        return self.tmux("display-message", "-p", "pane dead: #{pane_dead}").strip()

    def title(self) -> str:
        return self.tmux("display-message", "-p", "#{pane_title}").strip()

    def wait_for(self, text: str, timeout: float = 10) -> str:
        """Wait until ``text`` is on the screen (tmux drops trailing blanks: so does this)."""
        text = text.rstrip()
        return self._wait(lambda: self.screen() if text in self.screen() else "", timeout, text)

    def wait_for_toolbar(self, text: str, timeout: float = 10) -> str:
        return self._wait(lambda: self.toolbar() if text in self.toolbar() else "", timeout, text)

    def _wait(self, found: Callable[[], str], timeout: float, text: str) -> str:
        try:
            return str(wait_until(found, timeout, f"{text!r} never appeared"))
        except AssertionError as exc:
            raise AssertionError(f"{exc} ({self.pane_status()}):\n{self.screen()}") from None

    # -- what the tenant does ---------------------------------------------------------------

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def raw(self, data: bytes) -> None:
        """Bytes exactly as a terminal would send them."""
        self.tmux("send-keys", "-H", *(f"{byte:02x}" for byte in data))

    def paste(self, text: str) -> None:
        """A bracketed paste (when the shell asked the terminal for bracketed pastes)."""
        self.tmux("load-buffer", "-b", "test", "-", input=text.encode())
        self.tmux("paste-buffer", "-b", "test", "-p", "-r", "-d")

    def run(self, line: str, expect: str, timeout: float = 10) -> str:
        self.type(line)
        self.keys("Enter")
        return self.wait_for(expect, timeout)

    # -- the processes ----------------------------------------------------------------------

    def shell_pid(self) -> int:
        """The pid of the tenant's vpsshell process (below runuser and env)."""
        root = int(self.tmux("display-message", "-p", "#{pane_pid}").strip())

        def find() -> int:
            for pid in _descendants(root):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    owner = os.stat(f"/proc/{pid}").st_uid
                except OSError:
                    continue
                if b"vpsshell" in cmdline and owner != 0:
                    return pid
            return 0

        return int(wait_until(find, 10, "no vpsshell process in the pane"))

    def exit_status(self, timeout: float = 10) -> int:
        """Wait for the shell to end; its exit status."""

        def ended() -> str:
            try:
                return self.status_file.read_text().strip()
            except FileNotFoundError:
                return ""

        try:
            return int(wait_until(ended, timeout, "the shell did not exit"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.screen()}") from None

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=15
        )
        shutil.rmtree(self.dir, ignore_errors=True)
