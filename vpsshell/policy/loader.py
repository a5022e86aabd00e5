"""Load a policy directory (``/etc/vpsshell/policy.d``) safely, and fingerprint it for reloads.

Only files named like ``10-tenants.policy`` (POLICY_FILE_RE, not hidden) are read, in sorted
name order; editor backups and package-manager leftovers are ignored. Every file read, and the
directory, must pass the one trusted-file rule (``vpsshell.checks``, the only module of vpsshell
that policy/ imports): a regular file (opened with O_NOFOLLOW and checked with fstat on the open
descriptor, so a swap between check and read cannot slip in) owned by a trusted uid and not
writable by group or others. Any violation is an error that makes the whole policy deny
everything. This module must never follow a symlink to a policy file, block on a FIFO, read an
unbounded amount of data, or raise on a bad directory.

``vpsshell-admin`` validates a change by loading the directory here with the change laid over
it (``overlay``), so the same checks and limits (size, number of files, number of rules) decide
whether a change may be installed as decide whether the helper accepts the result.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping

from vpsshell.checks import trusted_kind_problem, trusted_owner_problem

from .engine import Policy
from .model import MAX_FILE_BYTES, MAX_FILES, MAX_TOTAL_BYTES, PolicyError
from .parser import parse_sources

#: Names of the files that are read; anything else in the directory is ignored silently.
POLICY_FILE_RE = re.compile(r"\A[0-9a-z_.-]+\.policy\Z")

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def is_policy_file_name(name: str) -> bool:
    """True for names the loader reads: POLICY_FILE_RE and not a hidden file."""
    return not name.startswith(".") and POLICY_FILE_RE.match(name) is not None


def _ownership_problem(st: os.stat_result, trusted_uids: frozenset[int], what: str) -> str | None:
    problem = trusted_owner_problem(st, trusted_uids)
    return f"{what} is {problem}" if problem else None


def _read_file(
    dir_fd: int, name: str, trusted_uids: frozenset[int], budget: int
) -> tuple[bytes | None, str | None]:
    """Return (content, None) or (None, problem) for one candidate file."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "is a symbolic link (refused)"
        return None, f"cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        kind_problem = trusted_kind_problem(st)
        if kind_problem:
            return None, f"is {kind_problem}"
        problem = _ownership_problem(st, trusted_uids, "file")
        if problem:
            return None, problem
        limit = min(MAX_FILE_BYTES, budget)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                if limit < MAX_FILE_BYTES:
                    return None, f"policy directory holds more than {MAX_TOTAL_BYTES} bytes"
                return None, f"file larger than {MAX_FILE_BYTES} bytes"
            chunks.append(chunk)
        return b"".join(chunks), None
    except OSError as exc:
        return None, f"cannot read: {exc.strerror}"
    finally:
        os.close(fd)


def _check_text(text: str, budget: int) -> tuple[bytes | None, str | None]:
    """(encoded text, None) or (None, problem), with the limits ``_read_file`` applies."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > min(MAX_FILE_BYTES, budget):
        if budget < MAX_FILE_BYTES:
            return None, f"policy directory holds more than {MAX_TOTAL_BYTES} bytes"
        return None, f"file larger than {MAX_FILE_BYTES} bytes"
    return data, None


def load_policy_dir(
    path: str,
    trusted_uids: frozenset[int] = frozenset({0}),
    overlay: Mapping[str, str | None] | None = None,
) -> Policy:
    """Load every policy file in ``path`` as one policy; problems end up in ``policy.errors``.

    File errors name the file's base name; directory errors name ``path``. ``overlay`` maps
    policy file names to the text they are about to get (None: about to be removed): the
    directory is loaded as if that were done, each such file as a regular file of a trusted
    owner, counted against every limit like the others.
    """
    overlay = dict(overlay or {})
    for name in overlay:
        if not is_policy_file_name(name):
            raise ValueError(f"not a policy file name: {name!r}")
    fingerprint = dir_fingerprint(path)
    errors: list[PolicyError] = []
    sources: list[tuple[str, str]] = []
    files: list[str] = []
    names: list[str] = []
    ignored: list[str] = []
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        errors.append(PolicyError(path, 0, "policy directory does not exist"))
        return Policy(errors=errors, fingerprint=fingerprint)
    except NotADirectoryError:
        errors.append(PolicyError(path, 0, "policy directory is not a directory"))
        return Policy(errors=errors, fingerprint=fingerprint)
    except OSError as exc:
        errors.append(PolicyError(path, 0, f"cannot open policy directory: {exc.strerror}"))
        return Policy(errors=errors, fingerprint=fingerprint)
    try:
        problem = _ownership_problem(os.fstat(dir_fd), trusted_uids, "policy directory")
        if problem:
            errors.append(PolicyError(path, 0, problem))
        entries = sorted(os.listdir(dir_fd))
        present = {name for name in entries if is_policy_file_name(name)}
        present |= {name for name, text in overlay.items() if text is not None}
        present -= {name for name, text in overlay.items() if text is None}
        names = sorted(present)
        ignored = [name for name in entries if not is_policy_file_name(name)]
        if len(names) > MAX_FILES:
            errors.append(PolicyError(path, 0, f"more than {MAX_FILES} policy files"))
            names = names[:MAX_FILES]
        budget = MAX_TOTAL_BYTES
        for name in names:
            new_text = overlay.get(name)
            if new_text is not None:
                data, problem = _check_text(new_text, budget)
            else:
                data, problem = _read_file(dir_fd, name, trusted_uids, budget)
            if data is None:
                errors.append(PolicyError(name, 0, problem or "cannot read"))
                continue
            budget -= len(data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                errors.append(PolicyError(name, line, "not valid UTF-8"))
                continue
            sources.append((name, text))
            files.append(os.path.join(path, name))
    except OSError as exc:
        errors.append(PolicyError(path, 0, f"cannot list policy directory: {exc.strerror}"))
    finally:
        os.close(dir_fd)
    return Policy.from_parsed(
        parse_sources(sources),
        file_order=names,
        files=files,
        extra_errors=errors,
        fingerprint=fingerprint,
        ignored_files=ignored,
    )


def dir_fingerprint(path: str) -> tuple[object, ...]:
    """A cheap summary of ``path`` and its policy files that changes when any of them does.

    Covers the directory's inode/mtime/ctime/mode/owner and, per candidate file (lstat, so a
    symlink is described, not followed), name, inode, size, mtime, ctime, mode and owner.
    Never raises: a missing or unreadable directory gives a tuple naming the error.
    """
    try:
        st = os.stat(path)
        entries = sorted(os.listdir(path))
    except OSError as exc:
        return ("error", exc.errno)
    summary: list[object] = [st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid]
    for name in entries:
        if not is_policy_file_name(name):
            continue
        try:
            fst = os.lstat(os.path.join(path, name))
        except OSError as exc:
            summary.append((name, "error", exc.errno))
            continue
        summary.append(
            (
                name,
                fst.st_ino,
                fst.st_size,
                fst.st_mtime_ns,
                fst.st_ctime_ns,
                fst.st_mode,
                fst.st_uid,
            )
        )
    return tuple(summary)
