"""Assembling a running helper from its config: audit log, backend, event record and hooks,
consoles, policy, APIs and listening sockets, wired together in one place and stopped in
one place.

``vpsshelld`` uses it; so does the console benchmark, which must measure the same wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from vpsshell import __version__

if TYPE_CHECKING:
    from vpsshell.backends.base import Backend
    from vpsshell.daemon.accounts import AccountChecker
    from vpsshell.daemon.audit import AuditLog
    from vpsshell.daemon.config import DaemonConfig
    from vpsshell.daemon.confirm import PasswordChecker
    from vpsshell.daemon.consoles import ConsoleManager
    from vpsshell.daemon.events import EventRecord
    from vpsshell.daemon.hooks import HookRunner
    from vpsshell.daemon.pipeline import TenantApi
    from vpsshell.daemon.policy_state import PolicyState
    from vpsshell.daemon.server import Listener
    from vpsshell.policy import Policy

log = logging.getLogger("vpsshell")

STOP_GRACE_SECONDS = 1.0  # on stop: for consoles and followers to tell their clients why


class RunningHelper:
    """The parts of a started helper; ``stop()`` ends them: listening first, then consoles and
    followers (told why), connections, hooks, the backend, the audit log last."""

    def __init__(
        self,
        backend: Backend,
        audit: AuditLog,
        policy: PolicyState,
        consoles: ConsoleManager,
        events: EventRecord,
        hooks: HookRunner,
        tenant: Listener,
        admin: Listener,
        *,
        guard: asyncio.Task[None] | None = None,
        checkers: tuple[AccountChecker, PasswordChecker] | None = None,
        web: Listener | None = None,
    ) -> None:
        self.web = web  # vpsshell-web's socket, if the web console is set up
        self.guard = guard
        self.checkers = checkers
        self.events = events
        self.hooks = hooks
        self.backend = backend
        self.audit = audit
        self.policy = policy
        self.consoles = consoles
        self.tenant = tenant
        self.admin = admin

    async def stop(self) -> None:
        if self.guard is not None:
            self.guard.cancel()
        self.tenant.stop_accepting()
        self.admin.stop_accepting()
        if self.web is not None:
            self.web.stop_accepting()
        await self.consoles.stop()  # attached consoles are told that the helper is stopping
        self.events.close()  # and so are followers of events
        await self.tenant.stop(grace=STOP_GRACE_SECONDS)  # time to say so, then cancelled
        if self.web is not None:
            await self.web.stop(grace=STOP_GRACE_SECONDS)
        await self.admin.stop()
        await self.hooks.stop()  # a running hook gets a moment, then is killed
        await self.backend.close()
        for checker in self.checkers or ():
            checker.close()
        self.audit.close()


async def start_helper(config: DaemonConfig) -> RunningHelper:
    """Open everything the config names and start listening."""
    from vpsshell.backends import create_backend
    from vpsshell.daemon import systemd
    from vpsshell.daemon.accounts import AccountChecker
    from vpsshell.daemon.admin_api import AdminApi
    from vpsshell.daemon.audit import AuditLog
    from vpsshell.daemon.confirm import PasswordChecker
    from vpsshell.daemon.consoles import Attachment, ConsoleManager
    from vpsshell.daemon.event_store import EventStore
    from vpsshell.daemon.events import EventRecord
    from vpsshell.daemon.hooks import HookRunner
    from vpsshell.daemon.peer import Caller
    from vpsshell.daemon.pipeline import TenantApi
    from vpsshell.daemon.policy_state import PolicyState
    from vpsshell.daemon.pre_hooks import PreActionHooks
    from vpsshell.daemon.recordings import RecordingStore
    from vpsshell.daemon.server import Listener, bind_socket
    from vpsshell.daemon.session_guard import SessionGuard

    audit = AuditLog(config.audit_log, to_syslog=config.audit_syslog)
    audit.open()
    backend = create_backend(config.backend, config.state_dir)
    await backend.open()

    limits = config.limits
    events = EventRecord(
        limits.events_history,
        limits.events_follower_queue,
        EventStore(config.state_dir, limits.events_keep, limits.events_keep_days),
    )
    events.subscribe_backend(backend)
    hooks = HookRunner(
        config.hooks_dir,
        timeout=limits.hook_timeout_seconds,
        queue_limit=limits.hook_queue_events,
        tenant_queue_limit=limits.hook_queue_tenant_events,
        tenant_queue_per_user=limits.hook_queue_tenant_events_per_user,
    )
    events.add_listener(hooks.submit)
    hooks.start()

    def on_detach(attachment: Attachment, reason: str) -> None:
        audit.write(
            action="console-detach",
            decision="allow",
            result=reason,
            uid=attachment.caller.uid,
            user=attachment.caller.user,
            pid=attachment.caller.pid,
            domain=attachment.hub.name if attachment.hub else None,
            mode=attachment.mode,
            attachment=attachment.id,
            **({"via": attachment.via} if attachment.via else {}),
            seconds=round(time.time() - attachment.since, 1),
        )
        hub = attachment.hub
        events.record(
            "console-detached",
            domain=hub.name if hub else None,
            uuid=hub.uuid if hub else None,
            user=attachment.caller.user,
            detail=reason,
        )

    recordings = RecordingStore(
        config.recordings_path,
        limits,
        enabled=config.console_recordings,
        record_input=config.console_record_input,
    )
    consoles = ConsoleManager(
        backend, config.console_log_dir, limits, on_detach=on_detach, recordings=recordings
    )

    def on_reload(policy: Policy) -> None:
        errors = policy.errors
        audit.write(
            action="policy-reloaded",
            decision="admin",
            result="broken" if errors else "ok",
            message="; ".join(str(e) for e in errors)[:500] or None,
        )
        events.record(
            "policy-reloaded",
            domain=None,
            detail=f"broken: {errors[0]}" if errors else f"ok: {len(policy.rules)} rule(s)",
        )
        consoles.revoke(tenant_api.authorizer.still_attached_allowed)

    policy = PolicyState(config.policy_dir)
    accounts = AccountChecker(config.pam_service, threads=limits.account_check_threads)
    passwords = PasswordChecker(
        config.pam_service,
        attempts=limits.password_attempts,
        lockout_seconds=limits.password_lockout_seconds,
        threads=limits.password_check_threads,
        queue=limits.password_checks_in_flight,
    )
    tenant_api = TenantApi(
        backend,
        policy,
        audit,
        limits,
        consoles,
        events,
        passwords,
        accounts,
        audit_fail_open=config.audit_fail_open,
        pre_hooks=PreActionHooks(
            config.hooks_dir,
            timeout=limits.pre_hook_timeout_seconds,
            on_timeout=config.pre_hook_on_timeout,
            at_once=limits.pre_hook_runs_at_once,
            per_user=limits.pre_hook_runs_per_user,
        ),
    )
    tenant_api.authorizer.keys_by_default = config.keys_self_service

    from vpsshell.daemon.self_service import SelfService

    self_service = SelfService.from_config(config)  # keys and totp
    tenant_api.services.self_service = self_service
    tenant_api.authorizer.totp = self_service.totp

    async def admit(caller: Caller, max_age: float | None) -> str | None:
        return await accounts.refusal(caller.uid, caller.user, max_age or 0.0)

    policy.on_reload = on_reload
    policy.reload()
    await consoles.start_all()
    web = _web_listener(config, tenant_api, accounts, audit) if config.web_socket_path else None
    links = tenant_api.services.links
    admin_api = AdminApi(backend, policy, audit, consoles, limits, links=links)
    inherited = systemd.activated_socket(config.socket)
    tenant = Listener(
        "tenant",
        inherited or bind_socket(config.socket, 0o660, config.socket_group),
        tenant_api.handle,
        config.limits,
        audit,
        admit=admit,
        owns_path=inherited is None,  # systemd's socket unit owns an activated socket
    )
    admin = Listener(
        "admin",
        bind_socket(config.admin_socket, 0o600, None),
        admin_api.handle,
        config.limits,
        audit,
        allowed_uids=frozenset({0, os.geteuid()}),
        rate_limit_connections=False,  # root only
    )
    guard = SessionGuard(
        tenant_api.authorizer,
        consoles,
        interval=limits.session_recheck_seconds,
        account_max_age=limits.account_recheck_seconds,
    )
    await tenant.start()
    await admin.start()
    if web is not None:
        await web.start()
    log.info("vpsshelld %s listening on %s (backend %s)", __version__, config.socket, backend.kind)
    return RunningHelper(
        backend,
        audit,
        policy,
        consoles,
        events,
        hooks,
        tenant,
        admin,
        guard=asyncio.create_task(guard.run(), name="session-guard"),
        checkers=(accounts, passwords),
        web=web,
    )


def _web_listener(
    config: DaemonConfig, tenant_api: TenantApi, accounts: AccountChecker, audit: AuditLog
) -> Listener:
    """The socket ``vpsshell-web`` redeems console links on (``web_api``), open to the web
    service's user and root only. The links are minted on the tenant and admin sockets; the
    consoles they open go through a second tenant request path, the same but for ``via: "web"``
    in each record (``TaggedAudit``) and on each attachment."""
    import dataclasses
    import grp
    import pwd

    from vpsshell.daemon.pipeline import TenantApi
    from vpsshell.daemon.server import Listener, bind_socket
    from vpsshell.daemon.web_api import TaggedAudit, WebApi, expired_link_recorder
    from vpsshell.daemon.web_tokens import ConsoleLinks

    limits = config.limits
    links = ConsoleLinks(config.web_link_url, limits, on_expired=expired_link_recorder(audit))
    tenant_api.services.links = links
    web_path = TenantApi(
        tenant_api.backend,
        tenant_api.authorizer.policy,
        TaggedAudit(audit, via="web"),
        limits,
        tenant_api.services.consoles,
        tenant_api.events,
        tenant_api.authorizer.passwords,
        accounts,
        audit_fail_open=tenant_api.audit_fail_open,
        pre_hooks=tenant_api.pre_hooks,
    )
    web_path.services.via = "web"
    web_api = WebApi(links, web_path.handle, audit, limits, accounts)
    allowed = {0, os.geteuid()}
    group = None
    try:
        entry = pwd.getpwnam(config.web_socket_user)
    except KeyError:
        log.warning(
            "web_socket_user %r does not exist; only root may use %s",
            config.web_socket_user,
            config.web_socket_path,
        )
    else:
        allowed.add(entry.pw_uid)
        with contextlib.suppress(KeyError):
            group = grp.getgrgid(entry.pw_gid).gr_name
    # one service opens every browser's connection: its own cap, and no connection rate
    # (redemptions have theirs, web_redeems_per_minute)
    web_limits = dataclasses.replace(
        limits, max_connections_per_user=limits.web_sessions, max_connections=limits.web_sessions
    )
    return Listener(
        "web",
        bind_socket(config.web_socket_path, 0o660 if group else 0o600, group),
        web_api.handle,
        web_limits,
        audit,
        allowed_uids=frozenset(allowed),
        rate_limit_connections=False,
        refusal="not the web service",
    )
