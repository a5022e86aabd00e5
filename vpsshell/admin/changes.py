"""The one path every policy change takes: validate, show, re-check, install, reload.

``policy edit``, ``grant`` and ``revoke`` build a new text for one file and hand it here while
they hold the directory lock. A change is installed only if the whole directory validates with
it in place and the file still holds what the change was based on; then the helper is asked
to reload. This module must never install a policy with errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpsshell.admin import access
from vpsshell.admin.context import AdminContext, AdminExit
from vpsshell.admin.helper import reload_helper
from vpsshell.admin.identities import Identities
from vpsshell.admin.policydir import install_policy_file, load_with_overlay, read_policy_file
from vpsshell.policy import Policy


@dataclass
class Change:
    """A proposed new text for one policy file, and the bytes it was based on."""

    policy_dir: str
    name: str
    original: bytes | None
    text: str

    def validate(self, ctx: AdminContext) -> Policy:
        return load_with_overlay(self.policy_dir, {self.name: self.text}, ctx.trusted_uids)

    def current(self, ctx: AdminContext) -> Policy:
        return load_with_overlay(self.policy_dir, {}, ctx.trusted_uids)


def print_errors(ctx: AdminContext, change: Change, policy: Policy) -> None:
    from vpsshell.admin.policy_read import located

    for error in policy.errors:
        ctx.out(located(change.policy_dir, error))
    ctx.out(f"{len(policy.errors)} error(s): nothing was installed")


def print_diff(
    ctx: AdminContext, old: Policy, new: Policy, identities: Identities
) -> tuple[list[access.Access], list[access.Access]]:
    if old.errors:
        ctx.out("note: the policy in force now is broken (the helper denies everything)")
    added, removed = access.access_diff(old, new, identities, ctx.clock())
    for line in access.format_diff(added, removed):
        ctx.out(line)
    return added, removed


def install(ctx: AdminContext, change: Change) -> int:
    """Re-check and install ``change``, then reload the helper; the caller holds the lock."""
    if read_policy_file(change.policy_dir, change.name) != change.original:
        ctx.out(f"{change.name} changed while this change was being prepared; nothing installed")
        return AdminExit.FAILED
    policy = change.validate(ctx)  # the other files may have changed too
    if policy.errors:
        print_errors(ctx, change, policy)
        return AdminExit.FAILED
    install_policy_file(change.policy_dir, change.name, change.text)
    ctx.out(f"installed {change.policy_dir.rstrip('/')}/{change.name}")
    return AdminExit.OK if reload_helper(ctx) else AdminExit.FAILED
