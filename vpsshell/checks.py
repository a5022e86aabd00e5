"""One vocabulary for untrusted values: domain names, UUIDs, SysRq keys, host labels, and the
one rule for the files the helper trusts.

Every part of vpsshell that checks one of these values asks here, so each rule is written once:
the helper's request path and admin socket, the policy engine (which domain names a rule may
name), the backends (what they offer, what they accept), the console log (which strings may
become a file name). A second copy of a pattern is a second place for a bug.

The trusted-file rule (``trusted_file_problem``) is the one rule for a file whose content the
helper, running as root, believes or runs: policy files, hooks and Xen domain config files.
Such a file, and the directory it is in, must be

- owned by root, or by the helper's own user when the helper does not run as root (the
  unprivileged demo and tests): no other user may have written it;
- not writable by its group or by others (so nobody else may change it later);
- what it claims to be: a regular file (a directory for the directory), never reached
  through a symbolic link in that directory (a link could point anywhere, into a directory
  a tenant controls). The directory itself is named by root's own configuration and may be
  reached through a link; the directory found there is held to the rule.

This module imports nothing of vpsshell and nothing but the standard library, so that every
package may import it: ``policy/``, which otherwise imports nothing of vpsshell, and the shell,
which runs as the tenant. It only answers questions about values it is given; it never raises
on a bad value, reads a file or acts.
"""

from __future__ import annotations

import os
import re
import stat
from typing import TypeGuard

DOMAIN_NAME_MAX = 64
#: A domain name as vpsshell accepts it anywhere: letters, digits, ``_.:-``, not starting with
#: a punctuation character, at most DOMAIN_NAME_MAX characters.
DOMAIN_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
#: A backend's host label (the HOST column): the domain name's characters, up to a DNS name.
HOST_LABEL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"
HOST_LABEL_MAX = 253
#: A UUID as the backends give it: lowercase, 8-4-4-4-12 hex digits.
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: A magic SysRq key vpsshell sends: one lowercase letter or digit.
SYSRQ_KEY_PATTERN = r"[0-9a-z]"

_DOMAIN_NAME = re.compile(DOMAIN_NAME_PATTERN)
_HOST_LABEL = re.compile(HOST_LABEL_PATTERN)
_UUID = re.compile(UUID_PATTERN)
_SYSRQ_KEY = re.compile(SYSRQ_KEY_PATTERN)


def is_domain_name(untrusted: object) -> TypeGuard[str]:
    """A string vpsshell accepts as a domain name (whether such a domain exists or not)."""
    return isinstance(untrusted, str) and _DOMAIN_NAME.fullmatch(untrusted) is not None


def is_offered_domain_name(untrusted: object) -> TypeGuard[str]:
    """A domain name a backend may offer to tenants: never all digits, which would read as a
    hypervisor's numeric domain id."""
    return is_domain_name(untrusted) and not untrusted.isdigit()


def is_host_label(untrusted: object) -> TypeGuard[str]:
    return (
        isinstance(untrusted, str)
        and len(untrusted) <= HOST_LABEL_MAX
        and _HOST_LABEL.fullmatch(untrusted) is not None
    )


def is_uuid(untrusted: object) -> TypeGuard[str]:
    """A UUID in the lowercase form the backends give (callers lowercase a config's first)."""
    return isinstance(untrusted, str) and _UUID.fullmatch(untrusted) is not None


def is_sysrq_key(untrusted: object) -> TypeGuard[str]:
    return isinstance(untrusted, str) and _SYSRQ_KEY.fullmatch(untrusted) is not None


# -- the trusted-file rule -----------------------------------------------------------------


def helper_trusted_uids() -> frozenset[int]:
    """Who may own what the helper trusts: root, and the helper's own user."""
    return frozenset({0, os.geteuid()})


def _describe_uids(uids: frozenset[int]) -> str:
    return ", ".join(str(uid) for uid in sorted(uids)) or "none"


def trusted_kind_problem(info: os.stat_result, *, directory: bool = False) -> str | None:
    """Why ``info`` is not the kind of thing the rule wants (a regular file, or with
    ``directory`` a directory), or None. ``info`` must describe the file itself, never a
    symbolic link's target: an ``fstat`` of a descriptor opened with ``O_NOFOLLOW``, or an
    ``lstat`` (a link is then refused here)."""
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link (refused)"
    if directory:
        return None if stat.S_ISDIR(info.st_mode) else "not a directory"
    return None if stat.S_ISREG(info.st_mode) else "not a regular file"


def trusted_owner_problem(info: os.stat_result, trusted_uids: frozenset[int]) -> str | None:
    """Why someone else than ``trusted_uids`` could have written ``info``'s file, or None."""
    if info.st_uid not in trusted_uids:
        return f"owned by uid {info.st_uid}, not by a trusted uid ({_describe_uids(trusted_uids)})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        return f"group- or world-writable (mode {mode:04o}); run chmod go-w"
    return None


def trusted_file_problem(
    info: os.stat_result, trusted_uids: frozenset[int], *, directory: bool = False
) -> str | None:
    """Why a file (with ``directory``, a directory) must not be trusted, or None: the whole
    rule, the kind first. The answer is a phrase such as "owned by uid 1000, not by a trusted
    uid (0)", to follow "is" or a file name."""
    return trusted_kind_problem(info, directory=directory) or trusted_owner_problem(
        info, trusted_uids
    )
