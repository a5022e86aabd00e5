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
    raise BackendConfigError(f"backend.type: unknown backend {kind!r} (known: sim)")
