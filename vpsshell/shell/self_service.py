"""The tenant's self-service verbs: ``keys`` (their SSH public keys) and ``totp`` (a second factor).

Declared in the shared registry (``commands.command``) like every verb; the helper checks and
writes everything, these only gather the words (or the key line from stdin: ``ssh host keys add
< ~/.ssh/id_ed25519.pub``) and return data for ``render``.
"""

from __future__ import annotations

from typing import Any

from vpsshell.errors import UsageError
from vpsshell.shell.commands import JSON, Context, Output, command
from vpsshell.shell.grammar import ParsedCommand

KEY_LINE_MAX_CHARS = 16 * 1024  # the helper's own limit (key_line_bytes) is lower by default
KEYS_USAGE = "keys [add [KEY LINE] | remove FINGERPRINT] [--json]"


@command(
    "keys",
    "your SSH public keys: list, add (a .pub line, or stdin), remove FINGERPRINT",
    options=(JSON,),
    extra_arg="[add [KEY] | remove FINGERPRINT]",
    extra_words=True,
)
def cmd_keys(ctx: Context, parsed: ParsedCommand) -> Output:
    words = (parsed.extra or "").split(" ", 1)
    if words == [""] or words == ["list"]:
        return Output("keys", ctx.call("keys", {}))
    if words[0] == "add":
        line = words[1] if len(words) > 1 else _key_line_from_stdin(ctx)
        return Output("action", ctx.call("keys-add", {"line": line}))
    if words[0] == "remove" and len(words) == 2 and " " not in words[1]:
        return Output("action", ctx.call("keys-remove", {"fingerprint": words[1]}))
    raise UsageError(f"usage: {KEYS_USAGE}")


def _key_line_from_stdin(ctx: Context) -> str:
    """One public key line from stdin: pasted at a prompt, or piped (``< id_ed25519.pub``)."""
    env = ctx.env
    if env.stdin_isatty:
        env.stderr.write("Paste your public key (one line, from ~/.ssh/id_ed25519.pub): ")
        env.stderr.flush()
    try:
        # piped: everything, so that the helper refuses a second key rather than it being lost
        read = env.stdin.readline if env.stdin_isatty else env.stdin.read
        line = read(KEY_LINE_MAX_CHARS + 1)
    except (OSError, ValueError, UnicodeDecodeError):
        line = ""
    if not line.strip():
        raise UsageError("keys add: no key given (ssh HOST keys add < ~/.ssh/id_ed25519.pub)")
    if len(line) > KEY_LINE_MAX_CHARS:
        raise UsageError("keys add: the key line is too long")
    return line


@command(
    "totp",
    "second factor: status, enroll (shows a secret and QR code), confirm CODE",
    options=(JSON,),
    extra_arg="[enroll | confirm CODE]",
    extra_words=True,
)
def cmd_totp(ctx: Context, parsed: ParsedCommand) -> Output:
    words = (parsed.extra or "").split()
    if not words:
        return Output("totp", ctx.call("totp", {}))
    if words == ["enroll"]:
        return Output("totp-secret", ctx.call("totp-enroll", {}))
    if len(words) == 2 and words[0] == "confirm":
        result: Any = ctx.call("totp-confirm", {"code": words[1]})
        return Output("action", result)
    raise UsageError("usage: totp [enroll | confirm CODE] [--json]")
