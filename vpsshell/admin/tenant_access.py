"""Whether the tenants' group can run the login-shell launcher's Python, checked before install.

The launcher's ``#!`` line names this installation's interpreter. If a tenant cannot search a
directory on the way to it (pyenv's Python under ``/root``, mode 0700) or cannot read the
vpsshell package, ``install`` would succeed and every tenant login would fail with a bare
"Permission denied". So ``install`` and ``install-shell`` walk each path the kernel and Python
would follow (every parent directory, every symbolic link hop, the resolved file) and apply
the mode bits a member of the tenants' group gets: the group bits where the file's group is
that group, the other bits elsewhere (a tenant owns none of these files). POSIX ACLs are not
read; a directory that only an ACL opens is reported as closed, which errs on the safe side.
This module only reads file metadata.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import vpsshell

_MAX_LINK_HOPS = 40  # as the kernel's MAXSYMLINKS


def group_id(name: str) -> int | None:
    """The group's id, or None if it does not exist yet (then only the other bits apply)."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _owner(info: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"{user}:{group}"


def _allows(info: os.stat_result, gid: int | None, want: int) -> bool:
    """``want`` is a combination of the ``S_IROTH``/``S_IWOTH``/``S_IXOTH`` bits."""
    bits = (info.st_mode >> 3) & 0o7 if gid is not None and info.st_gid == gid else info.st_mode
    return bits & want == want


def _paths_followed(path: str) -> Iterator[str]:
    """``path``, then each symbolic link's target in turn, then the fully resolved path."""
    current = os.path.abspath(path)
    for _ in range(_MAX_LINK_HOPS):
        yield current
        if not os.path.islink(current):
            break
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    yield os.path.realpath(path)


def _closed_directory(path: str, gid: int | None) -> str | None:
    """The first directory above ``path`` (on any path followed) the group cannot search."""
    for followed in _paths_followed(path):
        for parent in reversed(Path(followed).parents):
            info = os.stat(parent)
            if not _allows(info, gid, stat.S_IXOTH):
                mode = stat.S_IMODE(info.st_mode)
                return f"directory {parent} (mode {mode:04o}, {_owner(info)}) is not searchable"
    return None


def problem(path: str, gid: int | None, want: int) -> str | None:
    """Why a member of group ``gid`` cannot get ``want`` access to ``path``, or None."""
    closed = _closed_directory(path, gid)
    if closed:
        return closed
    info = os.stat(path)
    if not _allows(info, gid, want):
        mode = stat.S_IMODE(info.st_mode)
        needs = "run" if want == stat.S_IXOTH else "read"
        return f"{os.path.realpath(path)} (mode {mode:04o}, {_owner(info)}) is not {needs}able"
    return None


def launcher_problems(group: str, python: str | None = None) -> list[str]:
    """Everything the tenants' ``group`` would be refused when the launcher starts."""
    gid = group_id(group)
    interpreter = python or sys.executable
    package = os.path.dirname(os.path.abspath(vpsshell.__file__))
    found = []
    for what, path, want in (
        ("the interpreter", interpreter, stat.S_IXOTH),
        ("the vpsshell package", package, stat.S_IROTH | stat.S_IXOTH),
    ):
        why = problem(path, gid, want)
        if why:
            found.append(f"{what} {path}: {why} for the group {group}")
    return found


def refuse_unusable_launcher(group: str) -> None:
    """Raise ``AdminError`` naming every obstacle, before anything is written."""
    from vpsshell.admin.context import AdminError

    found = launcher_problems(group)
    if found:
        raise AdminError(
            "tenants could not start vpsshell: "
            + "; ".join(found)
            + ". Install vpsshell with a Python they can run (e.g. a virtual environment made"
            " with /usr/bin/python3 outside /root), or open those directories to them"
        )
