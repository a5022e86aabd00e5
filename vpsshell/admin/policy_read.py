"""The read-only ``policy`` subcommands: check, explain, who, list, test.

They load the policy directory exactly as the helper does (``load_policy_dir``) and decide with
the same engine, so what they say is what the helper would do right now, given the users'
groups as NSS reports them on this machine. None of them changes a file; only ``check --strict``
talks to the helper, to learn which domains the backend has.
"""

from __future__ import annotations

import json
import os

from vpsshell.admin import access, backend_domains, lint
from vpsshell.admin.assertions import describe_failure, evaluate, parse_assertions
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.identities import Identities
from vpsshell.admin.policydir import read_texts
from vpsshell.policy import ACTIONS, Decision, Policy, PolicyError, load_policy_dir
from vpsshell.policy.engine import allowed_by_self_service
from vpsshell.policy.model import SELF_SERVICE, SUBJECT_NAME_RE, is_domain_name


def located(policy_dir: str, error: PolicyError | lint.Finding) -> str:
    """An error or warning with the file's full path, ready for an editor's jump list."""
    path = error.file if os.path.isabs(error.file) else os.path.join(policy_dir, error.file)
    message = error.message if isinstance(error, PolicyError) else f"warning: {error.message}"
    if error.line == 0:
        return f"{path}: {message}"
    return f"{path}:{error.line}: {message}"


def load(ctx: AdminContext, policy_dir: str) -> Policy:
    return load_policy_dir(policy_dir, trusted_uids=ctx.trusted_uids)


def report_broken(ctx: AdminContext, policy_dir: str, policy: Policy) -> None:
    for error in policy.errors:
        ctx.out(located(policy_dir, error))
    ctx.out(f"{len(policy.errors)} error(s): the helper denies everything until they are fixed")


def cmd_check(
    ctx: AdminContext,
    policy_dir: str,
    strict: bool,
    identities: Identities,
    planned: frozenset[str] = frozenset(),
) -> int:
    policy = load(ctx, policy_dir)
    if policy.errors:
        report_broken(ctx, policy_dir, policy)
    findings: list[lint.Finding] = []
    if strict:
        known = backend_domains.ask_helper(ctx)
        unknown = backend_domains.unknown_domain_findings(policy, known, planned) if known else []
        texts = read_texts(policy_dir)
        findings = lint.strict_findings(policy, texts, identities, ctx.today(), unknown)
        for finding in findings:
            ctx.out(located(policy_dir, finding))
    if policy.errors:
        return AdminExit.FAILED
    summary = f"OK: {len(policy.rules)} rule(s) in {len(policy.files)} file(s)"
    if strict:
        summary += f", {len(findings)} warning(s)" if findings else ", no warnings"
    ctx.out(summary)
    return AdminExit.FAILED if findings else AdminExit.OK


def _check_user(user: str) -> None:
    if not SUBJECT_NAME_RE.fullmatch(user):
        raise AdminError(f"bad user name {user!r}", AdminExit.USAGE)


def _check_domain(domain: str) -> None:
    if not is_domain_name(domain):
        raise AdminError(f"bad domain name {domain!r}", AdminExit.USAGE)


def _user_principal(
    ctx: AdminContext, user: str, identities: Identities
) -> tuple[access.Principal, bool]:
    known = identities.user_exists(user)
    if not known:
        ctx.note(f"note: {user} is not a known user (NSS); deciding as if in no groups")
    return access.user_principal(user, identities), known


def cmd_explain(
    ctx: AdminContext,
    policy_dir: str,
    user: str,
    action: str,
    domain: str,
    identities: Identities,
) -> int:
    _check_user(user)
    _check_domain(domain)
    known = (*ACTIONS, *SELF_SERVICE)
    if action not in known:
        raise AdminError(f"unknown action {action!r} (one of: {' '.join(known)})", AdminExit.USAGE)
    policy = load(ctx, policy_dir)
    principal, _ = _user_principal(ctx, user, identities)
    decision = policy.decide(user, principal.groups, action, domain, ctx.clock())
    by_default = allowed_by_self_service(decision, ctx.config.keys_self_service)
    allowed = decision.allowed or by_default
    ctx.out(f"{'ALLOW' if allowed else 'DENY'}: {user} {action} {domain}")
    ctx.out(f"groups: {', '.join(sorted(principal.groups)) or '-'}")
    if action in SELF_SERVICE:
        ctx.out(f"note: {action} is the user's own account: the domain does not matter")
    if by_default:
        ctx.out(f"note: no rule names {action}; keys_self_service lets every tenant use it")
    elif decision.reason and not decision.allowed:
        ctx.out(f"reason: {decision.reason}")
    if decision.implied_by:
        ctx.out(
            f"note: {decision.implied_by} implies {action}: no rule names {action} here, "
            f"so the {decision.implied_by} rules below decide"
        )
    if decision.confirm:
        ctx.out(f"confirm: {decision.confirm}")
    for rule in decision.matches:
        marker = "*" if rule is decision.deciding else " "
        ctx.out(f"{marker} {rule.location}: {rule.to_text()}")
    if policy.errors:
        report_broken(ctx, policy_dir, policy)
    elif not decision.matches and not by_default:
        ctx.out("no rule matches (default deny)")
    return AdminExit.OK if allowed else AdminExit.FAILED


def _actions_text(decisions: list[Decision]) -> str:
    parts = []
    for decision in decisions:
        if decision.allowed:
            confirm = f"(confirm={decision.confirm})" if decision.confirm else ""
            parts.append(decision.action + confirm)
    return " ".join(parts)


def _rows(
    ctx: AdminContext, policy: Policy, pairs: list[tuple[access.Principal, str]]
) -> list[dict[str, object]]:
    """One row per (principal, domain) with anything allowed."""
    rows: list[dict[str, object]] = []
    for principal, domain in pairs:
        decisions = access.decisions_for(policy, principal, domain, ctx.clock())
        allowed = [d for d in decisions if d.allowed]
        if not allowed:
            continue
        rows.append(
            {
                "who": principal.label,
                "domain": domain,
                "actions": [d.action for d in allowed],
                "confirm": {d.action: d.confirm for d in allowed if d.confirm},
                "rules": [r.location for r in access.allowing_rules(allowed)],
                "text": _actions_text(allowed),
            }
        )
    return rows


def _print_rows(ctx: AdminContext, rows: list[dict[str, object]], key: str) -> None:
    width = max(len(str(row[key])) for row in rows)
    for row in rows:
        rules = ", ".join(str(r) for r in row["rules"])  # type: ignore[attr-defined]
        ctx.out(f"  {str(row[key]).ljust(width)}  {row['text']}  [{rules}]")


def _strip(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in row.items() if k != "text"} for row in rows]


def cmd_who(
    ctx: AdminContext, policy_dir: str, domain: str, as_json: bool, identities: Identities
) -> int:
    _check_domain(domain)
    policy = load(ctx, policy_dir)
    if policy.errors and not as_json:
        report_broken(ctx, policy_dir, policy)
    people = access.principals([policy], identities)
    rows = [] if policy.errors else _rows(ctx, policy, [(p, domain) for p in people])
    if as_json:
        result = {"domain": domain, "broken": bool(policy.errors), "access": _strip(rows)}
        ctx.out(json.dumps(result, indent=2))
    elif rows:
        ctx.out(f"on {domain}:")
        _print_rows(ctx, rows, "who")
        if any(str(row["who"]).startswith("group:") for row in rows):
            ctx.out("(group:NAME: any member of that group)")
    else:
        ctx.out(f"nobody may do anything on {domain}")
    return AdminExit.FAILED if policy.errors else AdminExit.OK


def cmd_list(
    ctx: AdminContext, policy_dir: str, user: str, as_json: bool, identities: Identities
) -> int:
    _check_user(user)
    policy = load(ctx, policy_dir)
    if policy.errors and not as_json:
        report_broken(ctx, policy_dir, policy)
    principal, _ = _user_principal(ctx, user, identities)
    domains = sorted(access.candidate_domains(policy, principal, ctx.today()))
    rows = [] if policy.errors else _rows(ctx, policy, [(principal, d) for d in domains])
    if as_json:
        result = {
            "user": user,
            "groups": sorted(principal.groups),
            "broken": bool(policy.errors),
            "access": _strip(rows),
        }
        ctx.out(json.dumps(result, indent=2))
    elif rows:
        ctx.out(f"{user} (groups: {', '.join(sorted(principal.groups)) or '-'}) may:")
        _print_rows(ctx, rows, "domain")
    else:
        ctx.out(f"{user} may do nothing")
    return AdminExit.FAILED if policy.errors else AdminExit.OK


def cmd_test(
    ctx: AdminContext, policy_dir: str, path: str, verbose: bool, identities: Identities
) -> int:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(4 * 1024 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    assertions, problems = parse_assertions(text, path)
    policy = load(ctx, policy_dir)
    if policy.errors:
        report_broken(ctx, policy_dir, policy)
    for problem in problems:
        ctx.out(str(problem))
    outcomes = evaluate(policy, assertions, identities, ctx.clock())
    failed = [outcome for outcome in outcomes if not outcome.passed]
    for outcome in outcomes:
        if not outcome.passed:
            ctx.out(describe_failure(outcome))
        elif verbose:
            ctx.out(f"{outcome.assertion.location}: ok: {outcome.assertion}")
    ctx.out(
        f"{len(outcomes)} assertion(s), {len(failed)} failed"
        + (f", {len(problems)} unreadable line(s)" if problems else "")
    )
    if not outcomes and not problems:
        ctx.out(f"warning: {path} holds no assertions")
    return AdminExit.FAILED if failed or problems or policy.errors else AdminExit.OK
