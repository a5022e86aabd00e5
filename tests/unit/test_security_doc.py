"""docs/security.md lists every limit the helper enforces, with its default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vpsshell.daemon.config import DaemonConfig, Limits

DOC = Path(__file__).parents[2] / "docs" / "security.md"


def test_every_limit_is_in_the_security_doc_with_its_default() -> None:
    text = DOC.read_text()
    missing = []
    for field in dataclasses.fields(Limits):
        default = getattr(Limits(), field.name)
        shown = int(default) if isinstance(default, float) and default.is_integer() else default
        if f"| `{field.name}` | {shown} |" not in text:
            missing.append(f"{field.name} = {shown}")
    assert missing == []


def test_the_audit_fail_open_switch_is_in_the_security_doc() -> None:
    assert DaemonConfig().audit_fail_open is False
    assert "| `audit_fail_open` (top level) | false |" in DOC.read_text()
