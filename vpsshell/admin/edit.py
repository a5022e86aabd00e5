"""``policy edit [FILE]``: visudo for the policy directory.

The admin edits a private copy in ``$VISUAL``/``$EDITOR`` (default ``vi``, named before it runs),
run from an argv list (split like a shell would split words, but never through a shell) while
the directory is locked. The copy is validated together with the rest of the directory; the
admin sees the errors, or the change in who may do what, and chooses to edit again, discard or
apply; with ``--yes`` (scripts) a valid copy is applied and one with errors discarded, without
asking. A copy with errors cannot be applied. If the file changed underneath, nothing is
installed and the copy is kept for the admin.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile

from vpsshell.admin.changes import Change, install, print_diff, print_errors
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.identities import Identities
from vpsshell.admin.policydir import PolicyLock, read_policy_file, resolve_target

NEW_FILE_TEMPLATE = """\
# vpsshell policy; see vpsshell-policy(5).
#   allow|deny user:NAME|group:NAME ACTIONS DOMAINS [expires=YYYY-MM-DD] [reason="..."]
"""


FALLBACK_EDITOR = "vi"


def editor_command(ctx: AdminContext) -> tuple[str, str]:
    """The editor command and where it comes from: ``$VISUAL``, else ``$EDITOR``, else vi."""
    for variable in ("VISUAL", "EDITOR"):
        if ctx.environ.get(variable):
            return ctx.environ[variable], f"${variable}"
    return FALLBACK_EDITOR, "neither $VISUAL nor $EDITOR is set"


def editor_argv(ctx: AdminContext) -> list[str]:
    """The editor command split into words (no shell is involved)."""
    command, _ = editor_command(ctx)
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise AdminError(f"cannot parse the editor command {command!r}: {exc}") from None
    if not argv:
        raise AdminError("the editor command is empty ($VISUAL/$EDITOR)")
    return argv


def run_editor(ctx: AdminContext, path: str) -> bool:
    argv = [*editor_argv(ctx), path]
    command, origin = editor_command(ctx)
    ctx.note(f"editing {path} with {command} ({origin})")
    try:
        status = subprocess.run(argv, env=dict(ctx.environ), check=False).returncode
    except OSError as exc:
        raise AdminError(f"cannot run the editor {argv[0]!r}: {exc.strerror}") from None
    if status != 0:
        ctx.out(f"the editor exited with status {status}; nothing was changed")
        return False
    return True


def _read_copy(path: str) -> str | None:
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def cmd_edit(
    ctx: AdminContext, argument: str, identities: Identities, assume_yes: bool = False
) -> int:
    policy_dir = ctx.config.policy_dir
    name = resolve_target(policy_dir, argument)
    with PolicyLock(policy_dir):
        original = read_policy_file(policy_dir, name)
        start_text = original.decode("utf-8", "replace") if original is not None else None
        workdir = tempfile.mkdtemp(prefix="vpsshell-edit-")  # mode 0700, private to the admin
        copy = os.path.join(workdir, name)
        with open(copy, "w", encoding="utf-8") as fh:
            fh.write(start_text if start_text is not None else NEW_FILE_TEMPLATE)
        keep_copy = False
        try:
            result = _edit_loop(
                ctx, policy_dir, name, original, start_text, copy, identities, assume_yes
            )
            keep_copy = result == _KEEP
            if keep_copy:
                ctx.out(f"your version is kept in {copy}")
                return AdminExit.FAILED
            return result
        finally:
            if not keep_copy:
                shutil.rmtree(workdir, ignore_errors=True)


_KEEP = -1


def _edit_loop(
    ctx: AdminContext,
    policy_dir: str,
    name: str,
    original: bytes | None,
    start_text: str | None,
    copy: str,
    identities: Identities,
    assume_yes: bool,
) -> int:
    def what_now(prompt: str, choices: str) -> str:
        if assume_yes:  # apply what is valid, discard what is not: never edit again
            return "a" if "a" in choices else "x"
        return ctx.ask(prompt, choices, on_eof="x")

    installed_now = None  # the directory's policy, loaded once the first copy validates
    while True:
        if not run_editor(ctx, copy):
            return AdminExit.FAILED
        text = _read_copy(copy)
        if text is None:
            ctx.out(f"{name}: not valid UTF-8")
            if what_now("What now? (e)dit again, (x) discard: ", "ex") == "e":
                continue
            ctx.out("discarded; nothing was changed")
            return AdminExit.FAILED
        if text == start_text or (start_text is None and not _has_statements(text)):
            ctx.out(f"{name}: no changes")
            return AdminExit.OK
        change = Change(policy_dir, name, original, text, installed_now=installed_now)
        new = change.validate(ctx)
        if new.errors:
            print_errors(ctx, change, new)
            if what_now("What now? (e)dit again, (x) discard: ", "ex") == "e":
                continue
            ctx.out("discarded; nothing was changed")
            return AdminExit.FAILED
        installed_now = change.current(ctx)
        print_diff(ctx, installed_now, new, identities)
        choice = what_now("What now? (e)dit again, (x) discard, (a)pply: ", "exa")
        if choice == "e":
            continue
        if choice == "x":
            ctx.out("discarded; nothing was changed")
            return AdminExit.FAILED
        status = install(ctx, change)
        if status != AdminExit.OK and read_policy_file(policy_dir, name) != text.encode():
            return _KEEP
        return status


def _has_statements(text: str) -> bool:
    """Whether a new file holds anything but comments and blank lines."""
    return any(line.split("#", 1)[0].strip() for line in text.splitlines())
