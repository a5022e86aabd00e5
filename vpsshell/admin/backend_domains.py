"""Which domains the policy names that the backend does not know (``check --strict``, ``grant``).

A grant on a misspelt or not yet created domain is valid policy and silently does nothing; only
the running helper knows what the backend has, so this module asks it over the admin socket
(the ``domains`` operation, root only) and compares. A domain the admin says is planned
(``--planned``) is not reported. No helper, no check: the admin is told the names were not
checked, and nothing fails because of it. Domain names come back from the helper and are only
compared, never used as paths or commands.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from vpsshell.admin.context import AdminContext
from vpsshell.admin.helper import admin_call
from vpsshell.admin.lint import Finding
from vpsshell.errors import Unavailable, VpsError
from vpsshell.policy import Policy

#: A listing is quick; a helper that takes longer is not worth blocking the admin for.
QUERY_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class KnownDomains:
    names: frozenset[str]
    hosts_not_answering: tuple[str, ...]


def planned_names(words: Iterable[str] | None) -> frozenset[str]:
    """``--planned`` values: each may be a comma list."""
    return frozenset(name for word in words or () for name in word.split(",") if name)


def ask_helper(ctx: AdminContext, *, quiet_if_down: bool = False) -> KnownDomains | None:
    """The backend's domain names, or None (with a note) if the helper cannot tell."""
    try:
        answer = admin_call(ctx, "domains", timeout=QUERY_TIMEOUT_SECONDS)
    except Unavailable:
        if not quiet_if_down:
            ctx.note(
                f"note: the helper is not running (nothing answers on {ctx.config.admin_socket});"
                " domain names were not checked against the backend"
            )
        return None
    except VpsError as exc:
        ctx.note(f"note: domain names were not checked: the helper says {exc.message}")
        return None
    names = answer.get("domains") if isinstance(answer, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        ctx.note("note: domain names were not checked: unexpected answer from the helper")
        return None
    hosts = [str(host) for host in answer.get("hosts_not_answering") or []]
    if hosts:
        ctx.note(
            "note: these hosts do not answer now, so their domains may be reported as unknown: "
            + ", ".join(hosts)
        )
    return KnownDomains(frozenset(names), tuple(hosts))


def _advice(name: str) -> str:
    return f"if it is planned, say so with --planned {name}"


def unknown_domain_findings(
    policy: Policy, known: KnownDomains, planned: Collection[str]
) -> list[Finding]:
    """One warning per domain the rules name (sets expanded) that the backend does not know,
    at the first rule naming it; ``*`` names no domain."""
    findings: list[Finding] = []
    seen: set[str] = set()
    for rule in policy.rules:
        for name in sorted(rule.domains or ()):
            if name in seen or name in known.names or name in planned:
                continue
            seen.add(name)
            findings.append(
                Finding(
                    rule.file,
                    rule.line,
                    f"no domain {name!r} on the backend: this rule grants nothing on it "
                    f"({_advice(name)})",
                )
            )
    return findings


def warn_unknown_domains(ctx: AdminContext, domains: Collection[str]) -> None:
    """``grant``: a warning per domain the backend does not know (the grant is still made);
    without a helper, its reload note already says the grant waits for it."""
    known = ask_helper(ctx, quiet_if_down=True)
    if known is None:
        return
    for name in sorted(domains):
        if name not in known.names:
            ctx.note(f"warning: no domain {name!r} on the backend; {_advice(name)}")
