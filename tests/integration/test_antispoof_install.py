"""``vpsshell-admin install`` puts the anti-spoofing hook in place disabled: executable, in
``PREFIX/share/vpsshell/hooks``, where the helper never looks, and nothing of it in the hooks
directory; the README's way of enabling it (a two-line script in the hooks directory) is a
hook the helper runs; ``uninstall`` takes it back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from test_admin_uninstall import admin, host  # noqa: F401 (host: the fixture)

from vpsshell.checks import helper_trusted_uids
from vpsshell.daemon.hooks import skip_reason

SHIPPED = Path(__file__).resolve().parents[2] / "hooks" / "antispoof"
INSTALLED = "usr/local/share/vpsshell/hooks/antispoof"


def test_install_ships_the_hook_disabled_and_uninstall_removes_it(host: Path) -> None:  # noqa: F811
    installed = admin(host, "install")
    assert installed.returncode == 0, installed
    hook = host / INSTALLED
    assert hook.read_bytes() == SHIPPED.read_bytes()
    assert os.stat(hook).st_mode & 0o777 == 0o755
    assert f"created        /{INSTALLED}" in installed.stdout
    hooks_dir = host / "etc/vpsshell/hooks.d"
    assert hooks_dir.is_dir() and os.listdir(hooks_dir) == []  # disabled: nothing runs it
    usage = subprocess.run([str(hook), "--help"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 0 and "apply" in usage.stdout, usage

    # enabled as the README says: the helper would run this file
    enabled = hooks_dir / "50-antispoof"
    enabled.write_text(f"#!/bin/sh\nexec /{INSTALLED} --backend=xen\n")
    os.chmod(enabled, 0o755)
    assert skip_reason(enabled.name, os.lstat(enabled), helper_trusted_uids()) is None
    enabled.unlink()

    again = admin(host, "install")
    assert f"unchanged      /{INSTALLED}" in again.stdout
    removed = admin(host, "uninstall")
    assert removed.returncode == 0, removed
    assert f"removed        /{INSTALLED}" in removed.stdout
    assert not (host / "usr/local/share/vpsshell").exists()
