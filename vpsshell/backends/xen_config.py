"""The ``[backend]`` table of the xen backend, validated without importing pyxs.

Kept apart from the backend so that ``vpsshelld --check-config`` reports a typo in the table on a
machine where pyxs is not installed yet. It never runs ``xl`` and never touches XenStore: paths
are only checked for shape (absolute, no ``..``), not for existence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vpsshell.backends.base import (
    BackendConfigError,
    check_backend_table,
    check_host_label,
    check_timeout,
)

DEFAULT_XL = "/usr/sbin/xl"
DEFAULT_DOMAIN_CONFIG_DIR = "/etc/xen"
DEFAULT_XENSTORE_SOCKET = "/run/xenstored/socket"
DEFAULT_TIMEOUT_SECONDS = 30.0
_TIMEOUT_RANGE = (1.0, 300.0)
_PATH_MAX = 1024
_TABLE_KEYS = frozenset(
    {"type", "xl", "domain_config_dir", "xenstore_socket", "host", "timeout_seconds"}
)


@dataclass(frozen=True)
class XenConfig:
    xl: str = DEFAULT_XL  # absolute path of the xl binary, run without a shell
    domain_config_dir: str = DEFAULT_DOMAIN_CONFIG_DIR  # start = xl create DIR/NAME.cfg
    xenstore_socket: str = DEFAULT_XENSTORE_SOCKET
    host: str = "localhost"  # the label tenants see in the HOST column
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # one xl call


def parse_xen_config(table: dict[str, Any]) -> XenConfig:
    """Validate the ``[backend]`` table of a xen backend."""
    check_backend_table(table, "xen", _TABLE_KEYS)
    host = check_host_label("backend.host", table.get("host", os.uname().nodename))
    timeout = check_timeout(table, DEFAULT_TIMEOUT_SECONDS, *_TIMEOUT_RANGE)
    return XenConfig(
        xl=_absolute_path("backend.xl", table.get("xl", DEFAULT_XL)),
        domain_config_dir=_absolute_path(
            "backend.domain_config_dir", table.get("domain_config_dir", DEFAULT_DOMAIN_CONFIG_DIR)
        ),
        xenstore_socket=_absolute_path(
            "backend.xenstore_socket", table.get("xenstore_socket", DEFAULT_XENSTORE_SOCKET)
        ),
        host=host,
        timeout_seconds=timeout,
    )


def _absolute_path(where: str, value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or len(value) > _PATH_MAX
        or any(not ("\x21" <= ch <= "\x7e") for ch in value)
        or ".." in value.split("/")
    ):
        raise BackendConfigError(
            f"{where}: must be an absolute path of printable ASCII without spaces or '..', "
            f"got {value!r}"
        )
    return os.path.normpath(value)
