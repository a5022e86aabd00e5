"""The ``[backend]`` table of the xen backend, and ``create_backend`` picking it. No Xen needed."""

from __future__ import annotations

from typing import Any

import pytest

from vpsshell.backends import create_backend
from vpsshell.backends.base import BackendConfigError
from vpsshell.backends.xen_config import XenConfig, parse_xen_config


def table(**keys: Any) -> dict[str, Any]:
    return {"type": "xen", **keys}


def test_defaults_are_debians_paths() -> None:
    config = parse_xen_config(table(host="dom0"))
    assert config == XenConfig(
        xl="/usr/sbin/xl",
        domain_config_dir="/etc/xen",
        xenstore_socket="/run/xenstored/socket",
        host="dom0",
        timeout_seconds=30.0,
    )


def test_every_key_can_be_set() -> None:
    config = parse_xen_config(
        table(
            xl="/usr/lib/xen-4.17/bin/xl",
            domain_config_dir="/etc/xen/tenants/",
            xenstore_socket="/var/run/xenstored/socket",
            host="node1",
            timeout_seconds=60,
        )
    )
    assert config.xl == "/usr/lib/xen-4.17/bin/xl"
    assert config.domain_config_dir == "/etc/xen/tenants"
    assert (config.host, config.timeout_seconds) == ("node1", 60.0)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"xl": "xl"}, "backend.xl: must be an absolute path"),
        ({"xl": "/usr/sbin/xl --debug"}, "backend.xl: must be an absolute path"),
        ({"domain_config_dir": "/etc/xen/../tmp"}, "backend.domain_config_dir"),
        ({"xenstore_socket": 5}, "backend.xenstore_socket"),
        ({"host": "no spaces"}, "backend.host"),
        ({"timeout_seconds": 0}, "backend.timeout_seconds"),
        ({"timeout_seconds": True}, "backend.timeout_seconds"),
        ({"uri": "xen:///system"}, "unknown key"),
    ],
)
def test_mistakes_are_reported_with_the_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(BackendConfigError, match=message):
        parse_xen_config(table(**keys))


def test_create_backend_knows_xen(tmp_path: Any) -> None:
    pytest.importorskip("pyxs", reason="pyxs is not installed (vpsshell[xen])")
    backend = create_backend(table(host="dom0"), str(tmp_path))
    assert backend.kind == "xen"
    with pytest.raises(BackendConfigError, match="unknown key"):
        create_backend(table(hosts=[]), str(tmp_path))
    with pytest.raises(BackendConfigError, match="known: sim, libvirt, xen"):
        create_backend({"type": "xm"}, str(tmp_path))


@pytest.mark.parametrize("timeout", [0, 0.5, 301, True, "30", float("inf"), float("nan")])
def test_a_timeout_outside_one_to_300_seconds_is_refused(timeout: Any) -> None:
    with pytest.raises(BackendConfigError, match=r"backend\.timeout_seconds: .* from 1 to 300"):
        parse_xen_config(table(timeout_seconds=timeout))


def test_a_whole_number_timeout_is_seconds() -> None:
    assert parse_xen_config(table(timeout_seconds=5)).timeout_seconds == 5.0
