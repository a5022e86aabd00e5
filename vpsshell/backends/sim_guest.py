"""The guest side of a simulated domain: what its serial console prints and how it answers.

``SimGuest`` plays a tiny Debian guest on ``ttyS0``: a boot log, a getty login prompt, a
canonical-mode tty (echo, backspace, Ctrl-C, Ctrl-U, Ctrl-D) and a shell that knows a handful
of commands, plus the kernel's SysRq and panic messages. It owns no timers and no domain state:
the backend (``sim``) decides when the guest boots, stops or crashes and calls in here for the
text. Everything typed at it is untrusted tenant input; it is only ever echoed back to the same
domain's console, with control bytes dropped and every line capped like the kernel's N_TTY
buffer. It never blocks and never uses randomness, so tests can assert its output exactly.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from enum import Enum

KERNEL_RELEASE = "6.1.0-sim"
KERNEL_VERSION = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.0-sim (2024-01-01)"

# The N_TTY line discipline keeps at most 4095 bytes of an unfinished line (n_tty.c).
MAX_LINE_BYTES = 4095

_CR, _LF, _BS, _DEL = 0x0D, 0x0A, 0x08, 0x7F
_CTRL_C, _CTRL_D, _CTRL_U = 0x03, 0x04, 0x15
_BEL = b"\x07"

# (fraction of boot time, line); kernel lines get a "[    s.micros]" stamp from the fraction.
_BOOT_SCRIPT: tuple[tuple[float, bool, str], ...] = (
    (
        0.0,
        True,
        f"Linux version {KERNEL_RELEASE} (debian-kernel@lists.debian.org) "
        f"(gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) "
        f"{KERNEL_VERSION}",
    ),
    (
        0.0,
        True,
        f"Command line: BOOT_IMAGE=/boot/vmlinuz-{KERNEL_RELEASE} root=/dev/vda1 ro "
        "console=ttyS0,115200n8",
    ),
    (0.1, True, "smpboot: Allowing {vcpus} CPUs, 0 hotplug CPUs"),
    (0.2, True, "Memory: {memory_kib}K available"),
    (0.3, True, "EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none."),
    (0.4, True, "Run /sbin/init as init process"),
    (0.5, False, "Welcome to Debian GNU/Linux 12 (bookworm)!"),
    (0.6, False, "         Starting systemd-journald.service - Journal Service..."),
    (0.7, False, "[  OK  ] Started systemd-journald.service - Journal Service."),
    (0.8, False, "[  OK  ] Started ssh.service - OpenBSD Secure Shell server."),
    (0.9, False, "[  OK  ] Reached target multi-user.target - Multi-User System."),
)

_SYSRQ_HELP = (
    "sysrq: HELP : loglevel(0-9) reboot(b) crash(c) terminate-all-tasks(e) "
    "memory-full-oom-kill(f) kill-all-tasks(i) thaw-filesystems(j) sak(k) "
    "show-backtrace-all-active-cpus(l) show-memory-usage(m) nice-all-RT-tasks(n) poweroff(o) "
    "show-registers(p) show-all-timers(q) unraw(r) sync(s) show-task-states(t) unmount(u) "
    "show-blocked-tasks(w) dump-ftrace-buffer(z)"
)

# Key -> the lines the kernel prints (drivers/tty/sysrq.c action messages).
_SYSRQ_LINES: dict[str, tuple[str, ...]] = {
    "b": ("sysrq: Resetting",),
    "c": ("sysrq: Trigger a crash",),
    "e": ("sysrq: Terminate All Tasks",),
    "f": ("sysrq: Manual OOM execution",),
    "i": ("sysrq: Kill All Tasks",),
    "j": ("sysrq: Emergency Thaw of all frozen filesystems",),
    "k": ("sysrq: SAK",),
    "l": ("sysrq: Show backtrace of all active CPUs", "NMI backtrace for cpu 0"),
    "m": ("sysrq: Show Memory", "Mem-Info:", "{pages} pages RAM"),
    "n": ("sysrq: Nice All RT Tasks",),
    "o": ("sysrq: Power Off",),
    "p": ("sysrq: Show Regs", f"CPU: 0 PID: 0 Comm: swapper/0 Not tainted {KERNEL_RELEASE} #1"),
    "q": ("sysrq: Show clockevent devices & pending hrtimers (no others)",),
    "r": ("sysrq: Keyboard mode set to system default",),
    "s": ("sysrq: Emergency Sync", "Emergency Sync complete"),
    "t": ("sysrq: Show State", "task:systemd         state:S stack:0     pid:1     ppid:0"),
    "u": ("sysrq: Emergency Remount R/O", "Emergency Remount complete"),
    "w": ("sysrq: Show Blocked State",),
    "z": ("sysrq: Dump ftrace buffer",),
}
# SysRq keys that kill the console's processes, after which getty prints a fresh login prompt.
_SYSRQ_KILLS_SESSION = frozenset("eik")


class TtyMode(str, Enum):
    OFF = "off"  # no getty on ttyS0 (booting, stopping, crashed, shut off): input is lost
    LOGIN = "login"
    PASSWORD = "password"  # noqa: S105 - a tty mode, not a secret
    SHELL = "shell"


def kernel_stamp(seconds: float) -> str:
    """printk's ``[%5lu.%06lu]`` time stamp."""
    micros = max(0, round(seconds * 1_000_000))
    return f"[{micros // 1_000_000:5d}.{micros % 1_000_000:06d}]"


def format_uptime(seconds: int) -> str:
    """The "up ..." part of procps ``uptime``."""
    days, rest = divmod(max(0, seconds), 86400)
    hours, minutes = divmod(rest // 60, 60)
    text = f"{days} day{'s' if days != 1 else ''}, " if days else ""
    return text + (f"{hours:2d}:{minutes:02d}" if hours else f"{minutes} min")


class SimGuest:
    """The console personality of one simulated domain.

    ``write`` receives every byte the guest sends to its serial port; ``uptime`` returns the
    seconds since the guest began booting; ``wall_clock`` is the host's ``time.time``.
    """

    def __init__(
        self,
        hostname: str,
        *,
        vcpus: int,
        memory_mib: int,
        write: Callable[[bytes], None],
        uptime: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.hostname = hostname
        self.vcpus = vcpus
        self.memory_mib = memory_mib
        self._write = write
        self._uptime = uptime
        self._wall_clock = wall_clock
        self.mode = TtyMode.OFF
        self.user: str | None = None
        self._line = bytearray()
        self._last_was_cr = False

    # -- what the backend calls at state changes ---------------------------------------------

    def boot_log(self, boot_seconds: float) -> list[tuple[float, bytes]]:
        """(offset in seconds, bytes) chunks to print while booting, in order."""
        chunks: list[tuple[float, bytes]] = []
        for fraction, is_kernel, template in _BOOT_SCRIPT:
            offset = fraction * boot_seconds
            text = template.format(vcpus=self.vcpus, memory_kib=self.memory_mib * 1024)
            line = f"{kernel_stamp(offset)} {text}" if is_kernel else text
            data = (line + "\r\n").encode()
            if chunks and chunks[-1][0] == offset:
                chunks[-1] = (offset, chunks[-1][1] + data)
            else:
                chunks.append((offset, data))
        return chunks

    def power_on(self) -> None:
        """The machine (re)starts: no getty until the boot finishes."""
        self._session_over(TtyMode.OFF)

    def boot_finished(self) -> None:
        """Boot is complete: getty prints the issue line and the login prompt."""
        self._session_over(TtyMode.LOGIN)
        self._write(self._login_banner())

    def resume_silently(self) -> None:
        """The helper restarted while the guest ran: a getty is waiting, nothing is printed."""
        self._session_over(TtyMode.LOGIN)

    def stopping(self) -> None:
        """A graceful shutdown or reboot began: systemd stops services."""
        self._session_over(TtyMode.OFF)
        self._write(
            b"\r\n         Stopping ssh.service - OpenBSD Secure Shell server...\r\n"
            b"[  OK  ] Stopped ssh.service - OpenBSD Secure Shell server.\r\n"
            b"[  OK  ] Reached target shutdown.target - System Shutdown.\r\n"
        )

    def power_down(self) -> None:
        self._session_over(TtyMode.OFF)
        self._kernel_lines("reboot: Power down")

    def restarting(self) -> None:
        self._session_over(TtyMode.OFF)
        self._kernel_lines("reboot: Restarting system")

    def powered_off(self) -> None:
        """Pulled the plug: nothing more is printed."""
        self._session_over(TtyMode.OFF)

    def panic(self, reason: str) -> None:
        self._session_over(TtyMode.OFF)
        self._kernel_lines(
            f"Kernel panic - not syncing: {reason}",
            f"CPU: 0 PID: 1 Comm: swapper/0 Not tainted {KERNEL_RELEASE} #1",
            "Hardware name: vpsshell sim, BIOS 1.16.2-debian-1.16.2-1 04/01/2014",
            "Call Trace:",
            " <TASK>",
            " dump_stack_lvl+0x44/0x5c",
            " panic+0x118/0x2ee",
            " </TASK>",
            "Kernel Offset: disabled",
            f"---[ end Kernel panic - not syncing: {reason} ]---",
        )

    def sysrq(self, key: str) -> None:
        """Print what the kernel prints for a (validated, single-character) SysRq ``key``.

        Power effects of b, c and o are the backend's; this only handles the console."""
        if key.isdigit():
            self._kernel_lines("sysrq: Changing Loglevel", f"sysrq: Loglevel set to {key}")
            return
        lines = _SYSRQ_LINES.get(key, (_SYSRQ_HELP,))
        self._kernel_lines(*(line.format(pages=self.memory_mib * 256) for line in lines))
        if key in _SYSRQ_KILLS_SESSION and self.mode is not TtyMode.OFF:
            self._session_over(TtyMode.LOGIN)
            self._write(self._login_banner())

    # -- the tty --------------------------------------------------------------------------

    def feed(self, untrusted_data: bytes) -> None:
        """Keystrokes from the console, processed like a tty in canonical mode."""
        echo = bytearray()
        for byte in untrusted_data:
            if self.mode is TtyMode.OFF:
                break
            if byte == _LF and self._last_was_cr:
                # CR LF from a terminal is one Enter, not two.
                self._last_was_cr = False
                continue
            self._last_was_cr = byte == _CR
            echoing = self.mode is not TtyMode.PASSWORD
            if byte in (_CR, _LF):
                if echoing:
                    echo += b"\r\n"
                self._flush(echo)
                line, self._line = bytes(self._line), bytearray()
                self._end_of_line(line.decode("utf-8", errors="replace"))
            elif byte in (_DEL, _BS):
                if self._erase_char() and echoing:
                    echo += b"\b \b"
            elif byte == _CTRL_U:
                while self._erase_char():
                    if echoing:
                        echo += b"\b \b"
            elif byte == _CTRL_C:
                echo += b"^C\r\n"
                self._flush(echo)
                self._line.clear()
                if self.mode is TtyMode.PASSWORD:
                    self.mode = TtyMode.LOGIN
                self._write(self._prompt())
            elif byte == _CTRL_D:
                if not self._line and self.mode is TtyMode.SHELL:
                    self._flush(echo)
                    self._end_of_line("logout")
            elif byte < 0x20:
                continue  # other control bytes (ESC, tab, ...) are not part of the sim
            elif len(self._line) < MAX_LINE_BYTES:
                self._line.append(byte)
                if echoing:
                    echo.append(byte)
            else:
                echo += _BEL
        self._flush(echo)

    def _flush(self, echo: bytearray) -> None:
        if echo:
            self._write(bytes(echo))
            echo.clear()

    def _erase_char(self) -> bool:
        """Remove the last character (a whole UTF-8 sequence) of the line; False if empty."""
        if not self._line:
            return False
        while len(self._line) > 1 and self._line[-1] & 0xC0 == 0x80:
            self._line.pop()
        self._line.pop()
        return True

    def _session_over(self, mode: TtyMode) -> None:
        self.mode = mode
        self.user = None
        self._line.clear()
        self._last_was_cr = False

    def _login_banner(self) -> bytes:
        return f"\r\nDebian GNU/Linux 12 {self.hostname} ttyS0\r\n\r\n".encode() + self._prompt()

    def _prompt(self) -> bytes:
        if self.mode is TtyMode.SHELL:
            return f"{self.user}@{self.hostname}:~$ ".encode()
        if self.mode is TtyMode.PASSWORD:
            return b"Password: "
        return f"{self.hostname} login: ".encode()

    def _end_of_line(self, line: str) -> None:
        if self.mode is TtyMode.LOGIN:
            user = line.strip()
            if user:
                self.user = user
                self.mode = TtyMode.PASSWORD
            self._write(self._prompt())
        elif self.mode is TtyMode.PASSWORD:
            # Any password will do; the newline was not echoed, so login prints one.
            self.mode = TtyMode.SHELL
            motd = f"Linux {self.hostname} {KERNEL_RELEASE} {KERNEL_VERSION} x86_64"
            self._write(f"\r\n{motd}\r\n\r\n".encode() + self._prompt())
        elif self.mode is TtyMode.SHELL:
            self._run(line)

    def _run(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError:
            self._say("-sh: syntax error: unterminated quoted string")
            return
        if not words:
            self._write(self._prompt())
            return
        command, args = words[0], words[1:]
        if command in ("exit", "logout"):
            self._session_over(TtyMode.LOGIN)
            self._write(self._login_banner())
            return
        if command == "echo":
            self._say(" ".join(args))
        elif command == "hostname":
            self._say(self.hostname)
        elif command == "whoami":
            self._say(self.user or "")
        elif command == "uname":
            self._say(self._uname(args))
        elif command == "uptime":
            clock = time.strftime("%H:%M:%S", time.localtime(self._wall_clock()))
            self._say(
                f" {clock} up {format_uptime(int(self._uptime()))},  1 user,  "
                "load average: 0.00, 0.00, 0.00"
            )
        else:
            self._say(f"-sh: {command}: not found")

    def _uname(self, args: list[str]) -> str:
        fields = {
            "-s": "Linux",
            "-n": self.hostname,
            "-r": KERNEL_RELEASE,
            "-v": KERNEL_VERSION,
            "-m": "x86_64",
            "-o": "GNU/Linux",
        }
        if not args:
            return "Linux"
        if args == ["-a"]:
            return " ".join(fields.values())
        unknown = [a for a in args if a not in fields]
        if unknown:
            return f"uname: invalid option -- '{unknown[0].lstrip('-')}'"
        return " ".join(value for flag, value in fields.items() if flag in args)

    def _say(self, text: str) -> None:
        """One line of command output, then the prompt."""
        self._write(text.encode() + b"\r\n" + self._prompt())

    def _kernel_lines(self, *lines: str) -> None:
        stamp = kernel_stamp(self._uptime())
        self._write("".join(f"{stamp} {line}\r\n" for line in lines).encode())
