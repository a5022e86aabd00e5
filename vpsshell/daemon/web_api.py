"""The web socket's one operation: ``vpsshell-web`` redeems a console link for a browser.

Only the web service's user (``web_socket_user``) and root may connect; the listener checks the
peer credentials before a byte is read. What the web service says is not trusted for identity:
the token it passes on is looked up in ``ConsoleLinks``, and the console then runs as the user
who minted the link, exactly as that user's own ``console`` or ``watch`` request would: the
account is checked with PAM, the request goes through the tenant request path (``TenantApi``:
groups looked up now, the policy decided now, pre-action hooks, the audit line), and the session
is the same ``run_console_session`` with its re-checks, takeover notices, replay and pings. Every
record that path writes carries ``via: "web"``; the redemption itself has a line of its own
(``web-redeem``: which link, for whom, the browser's address as the web service reports it).

Redemptions are rate limited as a whole (``web_redeems_per_minute``): they all come from one
service, and a flood of forged links is refused and audited folded, never one line each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from vpsshell import protocol
from vpsshell.daemon.accounts import AccountChecker
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.config import Limits
from vpsshell.daemon.operation import int_arg, refuse_unknown, request_id_of
from vpsshell.daemon.peer import Caller
from vpsshell.daemon.ratelimit import TokenBucket
from vpsshell.daemon.recordings import MAX_DIMENSION
from vpsshell.daemon.server import Answer, RequestHandler
from vpsshell.daemon.web_tokens import ConsoleLinks, MintedConsole, RedeemRefused, token_id
from vpsshell.errors import UsageError

REMOTE_MAX_CHARS = 64  # an IPv6 address with a zone fits
OP_REDEEM = "redeem"


class TaggedAudit(AuditLog):
    """The helper's audit log with fields added to every record (``via: "web"``): what the
    tenant request path writes for a redeemed link, without a second log or a second path."""

    def __init__(self, log: AuditLog, **tags: Any) -> None:  # shares ``log``'s file
        super().__init__(log.path)
        self._log = log
        self._tags = tags

    def write(self, **fields: Any) -> bool:
        return self._log.write(**fields, **self._tags)

    def write_folded(self, key: Hashable, **fields: Any) -> None:
        self._log.write_folded(("tagged", key), **fields, **self._tags)

    def writable(self) -> bool:
        return self._log.writable()

    def flush_folds(self) -> None:
        self._log.flush_folds()

    def close(self) -> None:
        pass  # the log it writes to is closed by its owner


def _redeem_args(untrusted: dict[str, Any]) -> dict[str, Any]:
    refuse_unknown(untrusted, {"token", "rows", "cols", "remote"})
    untrusted_remote = untrusted.get("remote", "")
    if (
        not isinstance(untrusted_remote, str)
        or len(untrusted_remote) > REMOTE_MAX_CHARS
        or not untrusted_remote.isprintable()
    ):
        raise UsageError("remote: expected an address")
    return {
        "token": untrusted.get("token"),  # checked by ConsoleLinks.redeem, never logged
        "rows": int_arg(untrusted, "rows", 0, 0, MAX_DIMENSION),
        "cols": int_arg(untrusted, "cols", 0, 0, MAX_DIMENSION),
        "remote": untrusted_remote,
    }


def expired_link_recorder(audit: AuditLog) -> Callable[[MintedConsole], None]:
    """What ``ConsoleLinks`` calls for a link nobody used in time: one line, so that every
    minted link has an end in the audit log."""

    def record(minted: MintedConsole) -> None:
        audit.write(
            action="web-token-expired",
            decision="expired",
            result="expired",
            user=minted.caller.user,
            uid=minted.caller.uid,
            domain=minted.domain,
            mode=minted.mode,
            token=minted.token_id,
        )

    return record


class WebApi:
    def __init__(
        self,
        links: ConsoleLinks,
        console_requests: RequestHandler,
        audit: AuditLog,
        limits: Limits,
        accounts: AccountChecker | None = None,
    ) -> None:
        self.links = links
        self.console_requests = console_requests  # the tenant request path, records tagged
        self.audit = audit
        self.accounts = accounts
        self.rate = TokenBucket(limits.web_redeems_per_minute, limits.web_redeems_per_minute / 4)

    async def handle(
        self,
        caller: Caller,
        untrusted: dict[str, Any],
        progress: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> Answer:
        request_id = request_id_of(untrusted)
        audit: dict[str, Any] = {
            "socket": "web",
            "uid": caller.uid,
            "user": caller.user,
            "pid": caller.pid,
            "action": "web-redeem",
            "decision": "invalid",
        }
        if not self.rate.take(0):
            self._write_folded("rate-limited", audit, "temporary", "too many redemptions")
            return Answer(
                protocol.reply_error(request_id, "temporary", "too many console links at once")
            )
        try:
            untrusted_version = untrusted.get("v")
            if type(untrusted_version) is not int or untrusted_version != protocol.PROTOCOL_VERSION:
                raise UsageError("expected a version 1 request")
            if request_id is None:
                raise UsageError("request id missing or invalid")
            if untrusted.get("op") != OP_REDEEM:
                raise UsageError("the web socket has one operation: redeem")
            untrusted_args = untrusted.get("args")
            args = _redeem_args(untrusted_args if isinstance(untrusted_args, dict) else {})
        except UsageError as exc:
            self._write_folded("usage", audit, "usage", exc.message)
            return Answer(protocol.reply_error(request_id, "usage", exc.message))
        audit["remote"] = args["remote"]
        try:
            minted = self.links.redeem(args["token"])
        except RedeemRefused as refused:
            audit.update(decision="deny", reason=refused.reason)
            if refused.digest is not None:
                audit["token"] = token_id(refused.digest)
            if refused.reason == "invalid":  # anybody can send these: folded
                self._write_folded("invalid", audit, "denied", refused.message)
            else:
                self.audit.write(**audit, result="denied", message=refused.message)
            return Answer(protocol.reply_error(request_id, "denied", refused.message))
        return await self._open_console(caller, request_id, args, minted, audit, progress)

    async def _open_console(
        self,
        web_caller: Caller,
        request_id: int,
        args: dict[str, Any],
        minted: MintedConsole,
        audit: dict[str, Any],
        progress: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> Answer:
        """The console of a valid link, as the user who minted it (the process on the other
        end of the connection is the web service: its pid is the one recorded)."""
        owner = minted.caller._replace(pid=web_caller.pid)
        audit.update(
            decision="allow",
            token=minted.token_id,
            for_user=owner.user,
            domain=minted.domain,
            mode=minted.mode,
        )
        refusal = None
        if self.accounts is not None:
            refusal = await self.accounts.refusal(owner.uid, owner.user, 0.0)
        if refusal is not None:
            audit.update(decision="deny", reason=f"account refused: {refusal}")
            self.audit.write(**audit, result="denied")
            return Answer(
                protocol.reply_error(
                    request_id, "denied", "this account may not use vpsshell (ask your provider)"
                )
            )
        self.audit.write(**audit, result="ok")
        console_args: dict[str, Any] = {
            "domain": minted.domain,
            "rows": args["rows"],
            "cols": args["cols"],
        }
        if minted.mode == "write":
            console_args["takeover"] = minted.takeover
        request = protocol.request(
            request_id, "console" if minted.mode == "write" else "watch", console_args
        )
        reply, session = await self.console_requests(owner, request, progress)
        if reply.get("ok") and isinstance(reply.get("result"), dict):
            reply["result"]["user"] = owner.user  # whose console the page shows
        return Answer(reply, session)

    def _write_folded(self, kind: str, audit: dict[str, Any], result: str, message: str) -> None:
        self.audit.write_folded(("web", kind), **audit, result=result, message=message)
