"""Hypervisor backends behind one small interface (see ``base``).

Nothing above this package knows which backend is in use. ``create_backend`` picks one from the
``[backend]`` table of the daemon config and imports only that one.
"""

from __future__ import annotations

from typing import Any

from vpsshell.backends.base import Backend, BackendConfigError

__all__ = ["Backend", "BackendConfigError", "create_backend"]


def create_backend(table: dict[str, Any], state_dir: str) -> Backend:
    """Build the backend named by ``table["type"]`` (default ``sim``)."""
    kind = table.get("type", "sim")
    if kind == "sim":
        from vpsshell.backends.sim import SimBackend

        return SimBackend.from_config(table, state_dir)
    if kind == "libvirt":
        from vpsshell.backends.libvirt_config import parse_libvirt_config

        config = parse_libvirt_config(table)  # a typo is reported even without libvirt-python
        try:
            from vpsshell.backends.libvirt import LibvirtBackend
        except ImportError as exc:
            if exc.name != "libvirt":
                raise
            raise BackendConfigError(
                'backend.type = "libvirt" needs libvirt-python: install vpsshell[libvirt] '
                "(pip install 'vpsshell[libvirt]'; building it needs the system packages "
                "libvirt-dev, pkg-config, gcc and python3-dev)"
            ) from None
        return LibvirtBackend(config, state_dir)
    if kind == "xen":
        from vpsshell.backends.xen_config import parse_xen_config

        xen_config = parse_xen_config(table)  # a typo is reported even without pyxs
        try:
            from vpsshell.backends.xen import XenBackend
        except ImportError as exc:
            if exc.name != "pyxs":
                raise
            raise BackendConfigError(
                'backend.type = "xen" needs pyxs: install vpsshell[xen] '
                "(pip install 'vpsshell[xen]')"
            ) from None
        return XenBackend(xen_config, state_dir)
    raise BackendConfigError(f"backend.type: unknown backend {kind!r} (known: sim, libvirt, xen)")
