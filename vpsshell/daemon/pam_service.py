"""PAM for the helper: account checks on connect and password confirmation of actions.

Uses the PAM service named in the config (``pam_service``, default ``vpsshell``; see
``pam/vpsshell``). Account management (``pam_acct_mgmt``) runs for every new tenant
connection, so an expired account or one refused by an account module (pam_access, pam_time,
pam_nologin...) gets nothing from the helper even though sshd let it in. ``confirm=password``
rules authenticate the tenant (``pam_authenticate`` + ``pam_acct_mgmt``, via python-pam).
Calls block, so the helper runs them in threads. Passwords are never logged or kept.
"""

from __future__ import annotations

import ctypes
import importlib
from typing import Any

PAM_SUCCESS = 0
PAM_CONV_ERR = 19


def account_refusal(user: str, service: str) -> str | None:
    """None if PAM's account management accepts ``user``, else PAM's reason."""
    # python-pam's ctypes bindings (PamHandle, PamConv, conv_func) for an account-only check
    pam_internals: Any = importlib.import_module("pam.__internals")
    authenticator = pam_internals.PamAuthenticator()

    def no_conversation(n_messages, messages, p_response, app_data):  # type: ignore[no-untyped-def]
        return PAM_CONV_ERR  # account checks must not prompt anybody

    conv = pam_internals.PamConv(pam_internals.conv_func(no_conversation), 0)
    handle = pam_internals.PamHandle()
    code = authenticator.pam_start(
        service.encode(), user.encode(), ctypes.byref(conv), ctypes.byref(handle)
    )
    if code != PAM_SUCCESS:
        return f"pam_start failed ({code})"
    try:
        code = authenticator.pam_acct_mgmt(handle, 0)
        if code == PAM_SUCCESS:
            return None
        reason = authenticator.pam_strerror(handle, code)
        return reason.decode("utf-8", "replace") if reason else f"PAM error {code}"
    finally:
        authenticator.pam_end(handle, code)


def password_refusal(user: str, password: str, service: str) -> str | None:
    """None if ``password`` is ``user``'s and the account is usable, else PAM's reason."""
    pam: Any = importlib.import_module("pam")
    authenticator = pam.PamAuthenticator()
    if authenticator.authenticate(user, password, service=service, resetcreds=False):
        return None
    reason = authenticator.reason
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return str(reason or "authentication failed")
