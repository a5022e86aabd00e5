"""``vpsshell-demo --web`` as an unprivileged user: the demo helper, the web console in front of
it, a first link printed, and the shell's ``webconsole`` answered with another; all of it gone
afterwards."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import BIN
from website import ASSETS_CACHE

pytestmark = pytest.mark.root


def test_demo_with_the_web_console_prints_working_links(open_dir: Path, web_user: None) -> None:
    user = pwd.getpwnam("vpst-alice")
    cache = open_dir / "cache"
    shutil.copytree(ASSETS_CACHE, cache / "vpsshell-web")  # as if fetched before
    for path in [cache, *cache.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid)
    done = subprocess.run(
        ["runuser", "-u", "vpst-alice", "--", "env", "-i", f"XDG_CACHE_HOME={cache}"]
        + ["PATH=/usr/bin:/bin", str(BIN / "python"), "-I", "-m", "vpsshell.demo", "--web"]
        + ["-c", "webconsole web1 --json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    first = re.search(
        r"Open web1's console \(within 60 s, once\): (https://localhost:\d+/#\S+)", done.stdout
    )
    assert first, done.stdout
    second = json.loads(done.stdout[done.stdout.index("{") :])
    assert second["url"].split("#")[0] == first.group(1).split("#")[0]
    assert second["url"] != first.group(1)
    leftovers = [p for p in Path("/tmp").glob("vpsshell-demo-*") if p.stat().st_uid == user.pw_uid]
    assert leftovers == []
