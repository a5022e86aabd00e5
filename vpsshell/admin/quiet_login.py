"""What tenants see before their shell starts: the host's MOTD, kernel version and "Last login".

None of it comes from vpsshell. On Debian, ``pam_motd`` in ``/etc/pam.d/sshd`` prints
``/run/motd.dynamic`` (with ``uname -a`` from ``/etc/update-motd.d/10-uname``) and
``/etc/motd``; sshd itself prints "Last login" (``PrintLastLog``). sshd_config(5) does not
allow ``PrintMotd`` or ``PrintLastLog`` in a ``Match`` block, so the sshd snippet cannot turn
them off for the tenants' group alone. What can be per group is the PAM stack: a
``pam_succeed_if`` line that skips the ``pam_motd`` lines right after it for members of the
group. ``install --quiet-login`` inserts that line (marked, so ``uninstall`` removes exactly
it); ``install --sshd`` without it only prints what to change. "Last login" stays a global
choice (``PrintLastLog no`` in sshd_config) or a per-tenant ``~/.hushlogin``: sshd then shows
neither "Last login" nor what PAM printed (session.c skips its login messages); this module
only says so.
"""

from __future__ import annotations

import re

PAM_SSHD = "/etc/pam.d/sshd"
MARKER = "# vpsshell: no MOTD for the tenants' group (vpsshell-admin install --quiet-login)"

_MOTD_LINE = re.compile(r"^\s*-?session\s+(\[[^\]]*\]|\S+)\s+\S*pam_motd\.so\b")
_COMMENT_OR_BLANK = re.compile(r"^\s*(#|$)")


def skip_line(group: str, modules: int) -> str:
    """The PAM line that skips the next ``modules`` session modules for ``group``'s members.
    ``success=N`` counts modules, not lines; comments in between are not counted."""
    return (
        f"session [success={modules} default=ignore] pam_succeed_if.so quiet user ingroup {group}"
    )


def _motd_run(lines: list[str]) -> tuple[int, int] | None:
    """(index of the first pam_motd line, how many pam_motd modules follow in a row)."""
    for first, line in enumerate(lines):
        if _MOTD_LINE.match(line):
            count = 0
            for following in lines[first:]:
                if _MOTD_LINE.match(following):
                    count += 1
                elif not _COMMENT_OR_BLANK.match(following):
                    break
            return first, count
    return None


def has_skip(text: str) -> bool:
    return MARKER in text.splitlines()


def with_skip(text: str, group: str) -> str | None:
    """``text`` (a PAM file) with the marked skip line before its pam_motd lines; None if it
    has no pam_motd line. A file that already has the marked line is returned unchanged."""
    if has_skip(text):
        return text
    lines = text.splitlines(keepends=True)
    found = _motd_run(lines)
    if found is None:
        return None
    first, count = found
    lines[first:first] = [MARKER + "\n", skip_line(group, count) + "\n"]
    return "".join(lines)


def without_skip(text: str) -> str:
    """``text`` without the marked skip line (and its marker)."""
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    skip_next = False
    for line in lines:
        if line.rstrip("\n") == MARKER:
            skip_next = True
            continue
        if skip_next and "pam_succeed_if.so" in line:
            skip_next = False
            continue
        skip_next = False
        kept.append(line)
    return "".join(kept)


def advice(group: str) -> list[str]:
    """What install prints with ``--sshd`` when it does not change PAM itself."""
    return [
        'note: tenants still see the host\'s MOTD, kernel version and "Last login" at login:',
        "  MOTD and kernel version: add --quiet-login to put this line before the pam_motd",
        f"    lines of {PAM_SSHD} (N: how many pam_motd lines follow it):",
        f"    {skip_line(group, 2).replace('success=2', 'success=N')}",
        "  Last login: sshd_config(5) allows no PrintLastLog in a Match block; set",
        "    `PrintLastLog no` in /etc/ssh/sshd_config (for every user), or give each tenant",
        "    a ~/.hushlogin (sshd then shows neither Last login nor the MOTD)",
    ]
