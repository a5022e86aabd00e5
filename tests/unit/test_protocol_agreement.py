"""The conversation has one description: the helper's operations, the shell's calls, the
policy's actions, docs/protocol.md and the protocol module must agree.

A new operation that the shell never calls, a call of an operation the helper does not have, an
operation missing from the documentation or documented with another policy action, an action
the policy knows that no operation needs: each fails here. So does a message built or a frame
read outside ``vpsshell/protocol.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from vpsshell import protocol
from vpsshell.daemon.admin_api import ADMIN_OPERATIONS
from vpsshell.daemon.operations import TENANT_OPERATIONS
from vpsshell.policy import ACTIONS
from vpsshell.policy.model import SELF_SERVICE_ACTIONS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vpsshell"
DOC = (ROOT / "docs" / "protocol.md").read_text()
# the functions the shell sends a request through, and which argument is the operation
SHELL_SENDERS = {"call": 0, "open_console": 0, "attach_console": 0, "download": 0, "_request": 0}
SHELL_SENDERS_WITH_CONTEXT = {"_domain_request": 1}


def _doc_table(heading: str) -> dict[str, str]:
    """The first column (an ``op``) of the table under ``## heading``, to its second-to-last
    cells joined, e.g. the policy action column."""
    section = DOC.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = re.match(r"\| `([a-z-]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    assert rows, f"no table under '## {heading}' in docs/protocol.md"
    return rows


def _strings(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _shell_operations() -> set[str]:
    """Every operation name the shell (and its background watch) sends, read from its source."""
    found: set[str] = set()
    for path in sorted((PACKAGE / "shell").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            index = {**SHELL_SENDERS, **SHELL_SENDERS_WITH_CONTEXT}.get(name)
            if index is not None and len(node.args) > index:
                found.update(_strings(node.args[index]))
    return found


def _policy_action(doc_cell: str) -> str | None:
    """The documented action: the cell's leading `action`, or None (``—``, or a note)."""
    match = re.match(r"\s*`([a-z]+)`", doc_cell)
    return match.group(1) if match else None


def _declared_action(op: str) -> str | None:
    operation = TENANT_OPERATIONS.get(op, None)  # type: ignore[arg-type]  # no tenant op needs one
    assert operation is not None, op
    return operation.action


def test_the_shell_calls_exactly_the_helpers_tenant_operations() -> None:
    assert _shell_operations() == set(TENANT_OPERATIONS.names())


def test_the_documented_tenant_operations_are_the_helpers_with_their_policy_actions() -> None:
    documented = {
        op: _policy_action(cells.split("|")[1])
        for op, cells in _doc_table("Tenant operations").items()
    }
    declared = {op: _declared_action(op) for op in TENANT_OPERATIONS.names()}
    assert documented == declared


def test_every_policy_action_is_the_action_of_an_operation_and_no_other() -> None:
    needed = {_declared_action(op) for op in TENANT_OPERATIONS.names()}
    assert needed - {None} == set(ACTIONS) | SELF_SERVICE_ACTIONS


def test_the_documented_admin_operations_are_the_helpers() -> None:
    assert set(_doc_table("Admin socket")) == set(ADMIN_OPERATIONS.names())


def test_the_documented_session_messages_are_the_protocol_modules() -> None:
    documented = _doc_table("Session messages")
    assert set(documented) == set(protocol.SESSION_EVENTS) | set(protocol.SESSION_OPS)
    built = [
        protocol.notice("text"),
        protocol.record({"seq": 1}),
        protocol.closed("detached", "detached"),
        protocol.detach(),
        protocol.resize(24, 80),
    ]
    for message in built:
        frame = protocol.encode_message(message)
        frame_type, length = protocol.parse_header(frame[: protocol.HEADER.size])
        decoded = protocol.decode_message(frame[protocol.HEADER.size :])
        assert (frame_type, length, decoded) == (protocol.FRAME_MESSAGE, len(frame) - 5, message)
        assert decoded["v"] == protocol.PROTOCOL_VERSION and "id" not in decoded
        kind = protocol.session_event(decoded) or protocol.session_op(decoded)
        assert kind is not None
        fields = {name for name in decoded if name not in ("v", "event", "op")}
        assert fields == set(re.findall(r"`([a-z]+)`", documented[kind].split("|")[-1])), kind


def test_only_the_protocol_module_builds_messages_and_reads_frames() -> None:
    """No message is written as a literal (``"v": 1``), no frame is read by hand and no
    client path decodes JSON itself, outside vpsshell/protocol.py."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "protocol.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Dict) and any(
                isinstance(key, ast.Constant) and key.value in ("v", "event") for key in node.keys
            ):
                offenders.append(f"{where}: a message literal")
            if isinstance(node, ast.Attribute) and node.attr == "readexactly":
                offenders.append(f"{where}: a frame read by hand")
            client_side = path.parent.name == "shell" or path.name == "client.py"
            if (
                client_side
                and isinstance(node, ast.Attribute)
                and ast.unparse(node) == "json.loads"
            ):
                offenders.append(f"{where}: JSON decoded without protocol.decode_message")
    assert offenders == []
