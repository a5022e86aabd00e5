"""User and group lookups (NSS) for the admin tools, cached for the length of one command.

The policy engine never looks identities up; the helper does it per request from the peer's
uid. The admin tools have only names, so they ask NSS the way the helper would
(``os.getgrouplist``), and say so when a name is unknown instead of guessing. Tests substitute
``StaticIdentities`` to get fixed answers.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable, Mapping


class Identities:
    """NSS answers: a user's groups, whether a user or group exists, a group's members."""

    def __init__(self) -> None:
        self._groups: dict[str, list[str] | None] = {}
        self._members: dict[str, list[str]] = {}
        self._primary: dict[int, list[str]] | None = None

    def groups_of(self, user: str) -> list[str] | None:
        """The names of every group ``user`` is in (as the helper sees it), or None if unknown."""
        if user not in self._groups:
            self._groups[user] = self._lookup_groups(user)
        return self._groups[user]

    @staticmethod
    def _lookup_groups(user: str) -> list[str] | None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return None
        names = set()
        for gid in os.getgrouplist(entry.pw_name, entry.pw_gid):
            try:
                names.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
        return sorted(names)

    def user_exists(self, user: str) -> bool:
        return self.groups_of(user) is not None

    def group_exists(self, group: str) -> bool:
        try:
            grp.getgrnam(group)
        except KeyError:
            return False
        return True

    def members_of(self, group: str) -> list[str]:
        """Users whose supplementary or primary group is ``group`` (empty if NSS cannot list)."""
        if group not in self._members:
            try:
                entry = grp.getgrnam(group)
            except KeyError:
                self._members[group] = []
            else:
                if self._primary is None:
                    self._primary = {}
                    for user in pwd.getpwall():
                        self._primary.setdefault(user.pw_gid, []).append(user.pw_name)
                members = set(entry.gr_mem) | set(self._primary.get(entry.gr_gid, []))
                self._members[group] = sorted(members)
        return self._members[group]


class StaticIdentities(Identities):
    """Fixed users and groups (for tests and for ``policy test`` lines that name groups)."""

    def __init__(self, users: Mapping[str, Iterable[str]]) -> None:
        super().__init__()
        self.users = {user: sorted(set(groups)) for user, groups in users.items()}

    def groups_of(self, user: str) -> list[str] | None:
        return self.users.get(user)

    def group_exists(self, group: str) -> bool:
        return any(group in groups for groups in self.users.values())

    def members_of(self, group: str) -> list[str]:
        return sorted(user for user, groups in self.users.items() if group in groups)
