"""``policy grant`` and ``policy revoke``: idempotent edits of one managed policy file.

Grants live in ``90-vpsshell-admin.policy``, one rule per line, under a header that says the
file is managed. ``grant`` adds a rule (or updates the options of the same grant); ``revoke``
removes what it names from the managed rules of that subject, splitting a rule when only part
of it is revoked. Both go through the same validate-show-install-reload path as ``edit``
(changes.py); ``grant`` warns about a domain the running helper's backend does not know, unless
``--planned``. Command-line words become policy text only after a strict character check
(no spaces, quotes, ``#``, ``=`` or backslashes), so no argument can add a second statement
or an option; the parser then checks them like any policy line.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

from vpsshell.admin import access
from vpsshell.admin.backend_domains import warn_unknown_domains
from vpsshell.admin.changes import Change, install, print_diff, print_errors
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.identities import Identities
from vpsshell.admin.policydir import PolicyLock, load_with_overlay, read_policy_file
from vpsshell.policy import ACTIONS, Policy, Rule
from vpsshell.policy.model import ALL_ACTIONS, SELF_SERVICE
from vpsshell.policy.parser import tokenize_line

MANAGED_FILE = "90-vpsshell-admin.policy"
MANAGED_HEADER = """\
# Managed by vpsshell-admin: change it with `vpsshell-admin policy grant` and
# `vpsshell-admin policy revoke` (see vpsshell-admin(8)). One rule per line; comments and
# other lines are kept as they are, but rules here may be rewritten or removed by revoke.
"""

_WORD_RE = re.compile(r"[A-Za-z0-9_.:,@*$-]+")
_COMMAND_LINE = "command line"


@dataclass(frozen=True)
class Request:
    """A grant or revoke as typed: the subject and the ACTIONS and DOMAINS words."""

    subject: str
    actions: str
    domains: tuple[str, ...]

    def words(self) -> list[str]:
        return [self.subject, self.actions, *self.domains]


def _check_words(request: Request) -> None:
    for word in request.words():
        if not _WORD_RE.fullmatch(word):
            raise AdminError(
                f"{word!r}: only letters, digits and _ . : , @ * $ - are allowed here",
                AdminExit.USAGE,
            )


def _check_reason(reason: str) -> None:
    if not reason or '"' in reason or not reason.isprintable():
        raise AdminError("--reason must be printable text without double quotes", AdminExit.USAGE)


def rule_line(
    effect: str,
    subject: str,
    actions: str,
    domains: list[str] | tuple[str, ...],
    expires: _dt.date | None = None,
    reason: str | None = None,
    confirm: str | None = None,
) -> str:
    parts = [effect, subject, actions, *domains]
    if expires is not None:
        parts.append(f"expires={expires.isoformat()}")
    if reason is not None:
        parts.append(f'reason="{reason}"')
    if confirm is not None:
        parts.append(f"confirm={confirm}")
    return " ".join(parts)


def _parse_request(effect: str, request: Request, options: str, installed: Policy) -> Rule:
    """The request as one rule, with the installed policy's sets; usage error if bad.

    Read on its own (with the sets of ``installed``), so that it is never the rule past the
    policy's limit: a change that would cross the limit is refused as a whole when it is
    validated (exit 1, nothing installed), and a revoke that makes room still parses.
    """
    line = rule_line(effect, request.subject, request.actions, request.domains)
    if options:
        line += " " + options
    policy = installed.parse_with_sets({_COMMAND_LINE: line + "\n"})
    if policy.errors:
        message = "; ".join(e.message for e in policy.errors)
        if installed.errors:
            message += " (the policy has errors too: see vpsshell-admin policy check)"
        raise AdminError(message, AdminExit.USAGE)
    assert len(policy.rules) == 1
    return policy.rules[0]


def _single_line_statements(lines: list[str]) -> dict[int, list[str]]:
    """Line number -> tokens for every statement that fits on its own line."""
    found: dict[int, list[str]] = {}
    continued = False
    for number, raw in enumerate(lines, start=1):
        try:
            tokens, continues = tokenize_line(raw)
        except Exception:  # a line the parser rejects is left alone
            tokens, continues = [], raw.rstrip().endswith("\\")
        if tokens and not continued and not continues:
            found[number] = tokens
        continued = continues
    return found


def _managed_lines(original: bytes | None) -> list[str]:
    if original is None:
        return MANAGED_HEADER.splitlines()
    return original.decode("utf-8", "replace").splitlines()


def _grant_key(words: list[str]) -> tuple[str, frozenset[str], frozenset[str]]:
    domains = frozenset(item for word in words[3:] if "=" not in word for item in word.split(","))
    return (words[1], frozenset(words[2].split(",")), domains)


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _principal(subject: str, identities: Identities) -> access.Principal:
    return access.subject_principal(subject, identities)


def _warn_unknown_subject(ctx: AdminContext, subject: str, identities: Identities) -> None:
    kind, _, name = subject.partition(":")
    known = identities.user_exists(name) if kind == "user" else identities.group_exists(name)
    if not known:
        ctx.note(f"warning: no such {kind} {name!r} (NSS); the rule matches nobody until it exists")


def _finish(
    ctx: AdminContext,
    change: Change | None,
    dry_run: bool,
    identities: Identities,
) -> tuple[int, Policy | None]:
    """Validate, show the diff, install unless dry run. Returns (status, new policy)."""
    if change is None:
        return AdminExit.OK, None
    new = change.validate(ctx)
    if new.errors:
        print_errors(ctx, change, new)
        return AdminExit.FAILED, None
    print_diff(ctx, change.current(ctx), new, identities)
    if dry_run:
        ctx.out("dry run: nothing was changed")
        return AdminExit.OK, new
    return install(ctx, change), new


def cmd_grant(
    ctx: AdminContext,
    request: Request,
    expires: str | None,
    reason: str | None,
    confirm: str | None,
    dry_run: bool,
    identities: Identities,
    planned: bool = False,
) -> int:
    _check_words(request)
    options: list[str] = []
    if expires is not None:
        options.append(f"expires={expires}")
    if reason is not None:
        _check_reason(reason)
        options.append(f'reason="{reason}"')
    if confirm is not None:
        options.append(f"confirm={confirm}")
    policy_dir = ctx.config.policy_dir
    with PolicyLock(policy_dir):
        installed = load_with_overlay(policy_dir, {}, ctx.trusted_uids)
        rule = _parse_request("allow", request, " ".join(options), installed)
        if rule.expires is not None and rule.expires < ctx.today():
            ctx.note(f"warning: expires={rule.expires} is in the past; the rule never matches")
        _warn_unknown_subject(ctx, request.subject, identities)
        if not planned and rule.domains is not None:
            warn_unknown_domains(ctx, rule.domains)
        original = read_policy_file(policy_dir, MANAGED_FILE)
        lines = _managed_lines(original)
        new_line = rule_line(
            "allow",
            request.subject,
            request.actions,
            request.domains,
            rule.expires,
            rule.reason,
            rule.confirm,
        )
        key = _grant_key(tokenize_line(new_line)[0])
        same = [
            number
            for number, tokens in _single_line_statements(lines).items()
            if tokens[0] == "allow" and _grant_key(tokens) == key
        ]
        if any(lines[number - 1].strip() == new_line for number in same):
            ctx.out(f"already granted in {MANAGED_FILE}: {new_line}")
            return AdminExit.OK
        if same:
            lines[same[0] - 1] = new_line  # same grant, new options
            for number in reversed(same[1:]):
                del lines[number - 1]
        else:
            lines.append(new_line)
        change = Change(policy_dir, MANAGED_FILE, original, _join(lines), installed_now=installed)
        status, new = _finish(ctx, change, dry_run, identities)
    if status != AdminExit.OK or new is None:
        return status
    return _report_still_denied(ctx, new, rule, identities)


def _report_still_denied(
    ctx: AdminContext, policy: Policy, rule: Rule, identities: Identities
) -> int:
    principal = _principal(rule.subject, identities)
    assert rule.domains is not None
    denied = []
    for domain in sorted(rule.domains):
        for action in (a for a in ACTIONS if a in rule.actions):
            decision = policy.decide(principal.user, principal.groups, action, domain, ctx.clock())
            if not decision.allowed and decision.deciding is not None:
                denied.append(f"{action} {domain} (denied by {decision.deciding.location})")
    if denied:
        ctx.out(f"warning: {rule.subject} is still denied: " + ", ".join(denied))
        return AdminExit.FAILED
    return AdminExit.OK


def _revoke_lines(
    lines: list[str], managed: dict[int, Rule], target: Rule
) -> tuple[list[str], int]:
    """The managed lines with ``target`` removed from this subject's allow rules."""
    statements = _single_line_statements(lines)
    result: list[str] = []
    touched = 0
    for number, text in enumerate(lines, start=1):
        rule = managed.get(number)
        if (
            rule is None
            or number not in statements
            or rule.effect != "allow"
            or rule.subject != target.subject
            or rule.domains is None
        ):
            result.append(text)
            continue
        domains = rule.domains if target.domains is None else rule.domains & target.domains
        actions = rule.actions & target.actions
        if not domains or not actions:
            result.append(text)
            continue
        touched += 1
        options = (rule.expires, rule.reason, rule.confirm)
        kept_domains = sorted(rule.domains - domains)
        if kept_domains:  # the untouched domains keep every action, as written
            result.append(
                rule_line("allow", rule.subject, statements[number][2], kept_domains, *options)
            )
        kept_actions = rule.actions - target.actions
        if kept_actions:
            names = (
                "*"
                if kept_actions == ALL_ACTIONS
                else ",".join(a for a in (*ACTIONS, *SELF_SERVICE) if a in kept_actions)
            )
            result.append(rule_line("allow", rule.subject, names, sorted(domains), *options))
    return result, touched


def cmd_revoke(ctx: AdminContext, request: Request, dry_run: bool, identities: Identities) -> int:
    _check_words(request)
    policy_dir = ctx.config.policy_dir
    with PolicyLock(policy_dir):
        installed = load_with_overlay(policy_dir, {}, ctx.trusted_uids)
        target = _parse_request("deny", request, "", installed)
        original = read_policy_file(policy_dir, MANAGED_FILE)
        if original is None:
            ctx.out(f"nothing to revoke: there is no {MANAGED_FILE}")
            change = None
        else:
            lines = _managed_lines(original)
            managed = {r.line: r for r in installed.rules if r.file == MANAGED_FILE}
            new_lines, touched = _revoke_lines(lines, managed, target)
            if not touched:
                ctx.out(f"nothing to revoke in {MANAGED_FILE} for {request.subject}")
                change = None
            else:
                text = _join(new_lines)
                change = Change(policy_dir, MANAGED_FILE, original, text, installed_now=installed)
        status, new = _finish(ctx, change, dry_run, identities)
    if status != AdminExit.OK:
        return status
    return _report_still_allowed(ctx, new or installed, target, identities)


def _report_still_allowed(
    ctx: AdminContext, policy: Policy, target: Rule, identities: Identities
) -> int:
    principal = _principal(target.subject, identities)
    if target.domains is None:
        domains = sorted(access.candidate_domains(policy, principal, ctx.today()))
    else:
        domains = sorted(target.domains)
    still = []
    for domain in domains:
        decisions = [
            policy.decide(principal.user, principal.groups, action, domain, ctx.clock())
            for action in ACTIONS
            if action in target.actions
        ]
        allowed = [d for d in decisions if d.allowed]
        if allowed:
            rules = ", ".join(r.location for r in access.allowing_rules(allowed))
            names = " ".join(d.action for d in allowed)
            still.append(f"{names} on {domain} (by {rules})")
    if still:
        ctx.out(f"warning: {target.subject} may still do: " + "; ".join(still))
        return AdminExit.FAILED
    return AdminExit.OK
