"""The line ``install --quiet-login`` puts into sshd's PAM file, run by the real libpam.

A PAM service shaped like Debian's ``/etc/pam.d/sshd`` (two ``pam_motd`` lines, with message
files of the test's own) gets the line from ``quiet_login.with_skip``; libpam then opens a
session for a member of the tenants' group and for another user, through
``pam_start_confdir`` (libpam 1.4 and later) so that nothing under /etc/pam.d is touched.
The member must get no message of the day, the other user both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from typing import Any

import pytest
from harness import TEAM_GROUP

from vpsshell.admin.quiet_login import with_skip

PAM_TEXT_INFO = 4


class PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


ConvFunc = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(PamMessage)),
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_void_p,
)


class PamConv(ctypes.Structure):
    _fields_ = [("conv", ConvFunc), ("appdata_ptr", ctypes.c_void_p)]


def _libpam() -> ctypes.CDLL:
    name = ctypes.util.find_library("pam")
    if name is None:
        pytest.skip("libpam is not installed")
    lib = ctypes.CDLL(name)
    if not hasattr(lib, "pam_start_confdir"):
        pytest.skip("libpam older than 1.4 (no pam_start_confdir)")
    return lib


def session_messages(confdir: Path, service: str, user: str) -> list[str]:
    """What PAM says to ``user`` while opening (then closing) a session of ``service``."""
    lib = _libpam()
    said: list[str] = []

    def converse(count: int, messages: Any, responses: Any, _appdata: Any) -> int:
        for index in range(count):
            message = messages[index].contents
            if message.msg_style == PAM_TEXT_INFO and message.msg is not None:
                said.append(message.msg.decode())
        responses[0] = None  # no answers: info messages need none
        return 0

    callback = ConvFunc(converse)
    conversation = PamConv(callback, None)
    handle = ctypes.c_void_p()
    status = lib.pam_start_confdir(
        service.encode(),
        user.encode(),
        ctypes.byref(conversation),
        str(confdir).encode(),
        ctypes.byref(handle),
    )
    assert status == 0, f"pam_start_confdir: {status}"
    try:
        assert lib.pam_open_session(handle, 0) == 0
        lib.pam_close_session(handle, 0)
    finally:
        lib.pam_end(handle, 0)
    return said


def test_tenants_group_gets_no_motd_and_others_do(open_dir: Path, tenants: None) -> None:
    dynamic, static = open_dir / "motd.dynamic", open_dir / "motd"
    dynamic.write_text("Linux host 6.1.0-test #1 SMP x86_64\n")
    static.write_text("Welcome to the host\n")
    debian_like = (
        "session    required     pam_permit.so\n"
        "# Print the message of the day upon successful login.\n"
        f"session    optional     pam_motd.so motd={dynamic} noupdate\n"
        f"session    optional     pam_motd.so motd={static} noupdate\n"
        "session    required     pam_permit.so\n"
    )
    confdir = open_dir / "pam.d"
    confdir.mkdir()
    (confdir / "plain").write_text(debian_like)
    quiet = with_skip(debian_like, TEAM_GROUP)
    assert quiet is not None
    (confdir / "quiet").write_text(quiet)

    # without the line everybody sees both (the test sees what a tenant would)
    assert len(session_messages(confdir, "plain", "vpst-carol")) == 2
    assert session_messages(confdir, "quiet", "vpst-carol") == []  # in the group
    other = session_messages(confdir, "quiet", "vpst-alice")  # not in the group
    assert any("6.1.0-test" in text for text in other)
    assert any("Welcome to the host" in text for text in other)
