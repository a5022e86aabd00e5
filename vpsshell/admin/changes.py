"""The one path every policy change takes: validate, show, re-check, install, reload.

``policy edit``, ``grant`` and ``revoke`` build a new text for one file and hand it here while
they hold the directory lock. A change is installed only if the whole directory validates with
it in place (the helper's loader with every limit: a change that would put the policy over
its number of rules is refused like a syntax error, exit 1) and the file still holds what the
change was based on; then the helper is asked to reload. This module must never install a
policy with errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpsshell.admin import access
from vpsshell.admin.context import AdminContext, AdminExit
from vpsshell.admin.helper import reload_helper
from vpsshell.admin.identities import Identities
from vpsshell.admin.policydir import install_policy_file, load_with_overlay, read_policy_file
from vpsshell.policy import Policy, dir_fingerprint


@dataclass
class Change:
    """A proposed new text for one policy file, and the bytes it was based on.

    ``validated`` and ``installed_now`` keep the last loads (a large policy takes seconds to
    load); each is used again only while the directory's fingerprint says nothing changed.
    """

    policy_dir: str
    name: str
    original: bytes | None
    text: str
    validated: Policy | None = field(default=None, repr=False, compare=False)
    installed_now: Policy | None = field(default=None, repr=False, compare=False)

    def _unchanged(self, policy: Policy | None) -> bool:
        return policy is not None and policy.fingerprint() == dir_fingerprint(self.policy_dir)

    def validate(self, ctx: AdminContext) -> Policy:
        """The whole directory as the helper would load it with this change installed."""
        if not self._unchanged(self.validated):
            overlay = {self.name: self.text}
            self.validated = load_with_overlay(self.policy_dir, overlay, ctx.trusted_uids)
        assert self.validated is not None
        return self.validated

    def current(self, ctx: AdminContext) -> Policy:
        """The directory's policy as it is (the one in force once the helper reloaded)."""
        if not self._unchanged(self.installed_now):
            self.installed_now = load_with_overlay(self.policy_dir, {}, ctx.trusted_uids)
        assert self.installed_now is not None
        return self.installed_now


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
    policy = change.validate(ctx)  # loaded again if the other files changed meanwhile
    if policy.errors:
        print_errors(ctx, change, policy)
        return AdminExit.FAILED
    install_policy_file(change.policy_dir, change.name, change.text)
    ctx.out(f"installed {change.policy_dir.rstrip('/')}/{change.name}")
    return AdminExit.OK if reload_helper(ctx) else AdminExit.FAILED
