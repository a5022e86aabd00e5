"""One-time console links: minted by someone already authenticated, remembered only here.

A tenant (``webconsole``, over the tenant socket) or an admin (``console-url``, over the admin
socket) asks for a link; the helper draws a random token (256 bits), keeps its SHA-256 with who
it is for (user, uid, gid and groups as resolved at minting), the domain, the mode and when it
expires, and hands back ``web_url#TOKEN``. ``vpsshell-web`` later presents the token once
(``WebApi``); the helper looks its hash up, forgets it, and runs the console as that user. The
web service never learns who anyone is: it only relays.

The token itself is never stored, logged or compared as such: records name a token by the first
16 hex digits of its hash (``token_id``), enough to follow one link from minting to use or
expiry. A token that was used or expired is remembered (its hash) for a while, so its second use
gets "already used" or "expired" instead of "not valid". Everything here lives in the helper's
memory: a restarted helper has forgotten every link, which then reads as "not valid".
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from vpsshell.daemon.config import Limits
from vpsshell.daemon.peer import Caller
from vpsshell.errors import ActionFailed, TemporaryFailure

TOKEN_BYTES = 32  # 256 bits, URL-safe base64: 43 characters
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
SPENT_KEPT_SECONDS = 3600.0  # how long a used or expired link is told apart from a forged one
SPENT_KEPT_MAX = 100_000
MODES = ("write", "watch")
NEEDS_CONFIRMATION = (
    "this console needs a password (confirm=), which a browser cannot give: use console over SSH"
)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def token_id(digest: str) -> str:
    """What records call a token: a prefix of its hash, never the token."""
    return digest[:16]


@dataclass(frozen=True)
class MintedConsole:
    """What a console link stands for, as the helper resolved it when the link was minted."""

    caller: Caller  # the user the console will run as (groups are looked up again on use)
    domain: str
    mode: str  # "write" | "watch"
    takeover: bool
    expires: float  # time.time()
    digest: str
    minted_by: str  # "tenant" | "admin"

    @property
    def token_id(self) -> str:
        return token_id(self.digest)


class RedeemRefused(Exception):
    """A link that cannot be used: ``reason`` is ``used``, ``expired`` or ``invalid``."""

    def __init__(self, reason: str, message: str, digest: str | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.digest = digest


REFUSALS = {
    "used": "this console link was already used; ask for a new one",
    "expired": "this console link has expired; ask for a new one",
    "invalid": "this is not a valid console link (mistyped, cut short, or from a restarted host)",
}


class ConsoleLinks:
    """The links minted and not used yet, and those used or expired lately (hashes only)."""

    def __init__(
        self,
        web_url: str,
        limits: Limits,
        on_expired: Callable[[MintedConsole], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.web_url = web_url
        self.limits = limits
        self._on_expired = on_expired
        self._clock = clock
        self._open: dict[str, MintedConsole] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._spent: OrderedDict[str, tuple[str, float]] = OrderedDict()  # digest -> reason, when

    @property
    def enabled(self) -> bool:
        return bool(self.web_url)

    def mint(
        self,
        caller: Caller,
        domain: str,
        mode: str,
        *,
        takeover: bool = False,
        seconds: int | None = None,
        minted_by: str = "tenant",
    ) -> tuple[str, MintedConsole]:
        """A new link for ``caller``: (its URL, what it stands for). The caller must already
        have been authorized for ``mode`` on ``domain``; that is decided again on use."""
        if not self.enabled:
            raise ActionFailed("the web console is not set up on this host (web_url)")
        assert mode in MODES
        mine = sum(1 for minted in self._open.values() if minted.caller.uid == caller.uid)
        if mine >= self.limits.web_tokens_per_user:
            raise TemporaryFailure(
                f"{mine} console links of yours are still unused; use one or let them expire"
            )
        lifetime = self.limits.web_token_seconds if seconds is None else seconds
        lifetime = max(1, min(lifetime, self.limits.web_token_max_seconds))
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = token_digest(token)
        minted = MintedConsole(
            caller, domain, mode, takeover, self._clock() + lifetime, digest, minted_by
        )
        self._open[digest] = minted
        self._timers[digest] = asyncio.get_running_loop().call_later(lifetime, self._expire, digest)
        return f"{self.web_url}#{token}", minted

    def redeem(self, untrusted_token: object) -> MintedConsole:
        """What the link stands for, forgotten at once (single use); ``RedeemRefused`` if it
        was used, has expired or never existed."""
        if not isinstance(untrusted_token, str) or not TOKEN_PATTERN.fullmatch(untrusted_token):
            raise RedeemRefused("invalid", REFUSALS["invalid"], None)
        digest = token_digest(untrusted_token)
        minted = self._open.pop(digest, None)
        if minted is None:
            spent = self._spent.get(digest)
            reason = spent[0] if spent is not None else "invalid"
            raise RedeemRefused(reason, REFUSALS[reason], digest)
        timer = self._timers.pop(digest, None)
        if timer is not None:
            timer.cancel()
        if self._clock() >= minted.expires:  # its timer has not fired yet
            self._remember(digest, "expired")
            self._on_expired(minted)
            raise RedeemRefused("expired", REFUSALS["expired"], digest)
        self._remember(digest, "used")
        return minted

    def _expire(self, digest: str) -> None:
        self._timers.pop(digest, None)
        minted = self._open.pop(digest, None)
        if minted is not None:
            self._remember(digest, "expired")
            self._on_expired(minted)

    def _remember(self, digest: str, reason: str) -> None:
        now = self._clock()
        self._spent[digest] = (reason, now)
        self._spent.move_to_end(digest)
        while self._spent:
            oldest, (_, when) = next(iter(self._spent.items()))
            if len(self._spent) <= SPENT_KEPT_MAX and now - when < SPENT_KEPT_SECONDS:
                break
            del self._spent[oldest]

    def pending(self) -> int:
        return len(self._open)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._open.clear()
