"""The waits of the helper's request loop: a connection quiet between requests is closed
without a word and without an audit line, and the deadline of a frame starts at its first byte.

Uses the in-process helper of test_tenant_api (``with_helper``: the whole helper on the sim
backend, a real Unix socket, the user running the tests as the tenant).
"""

from __future__ import annotations

from test_tenant_api import ME, Site, error_of, result_of, with_helper

from vpsshell import protocol


@with_helper(idle_timeout_seconds=1)
async def test_a_connection_quiet_between_requests_is_closed_silently(site: Site) -> None:
    client = await site.connect()
    assert result_of(await client.call("whoami"))["user"] == ME
    assert await client.closed_by_peer()  # after the idle timeout, with nothing said
    assert [r for r in site.audit() if r["action"] == "protocol"] == []


@with_helper(idle_timeout_seconds=1)
async def test_a_frame_begun_before_the_idle_timeout_gets_the_frame_deadline(
    site: Site,
) -> None:
    """Once its first byte is in, a frame has ``FRAME_SECONDS`` to complete, whatever is left
    of the idle timeout: the rest may come after the idle timeout has passed."""
    client = await site.connect()
    request = protocol.encode_message(protocol.request(1, "whoami", {}))
    await client.send_raw(request[:3])
    quiet = await site.connect()  # a connection that says nothing meanwhile is closed
    assert await quiet.closed_by_peer()
    await client.send_raw(request[3:])
    assert result_of(await client.reply())["user"] == ME
    await client.send_raw(request[:1])
    client.writer.write_eof()
    assert error_of(await client.message()) == (
        "usage",
        "connection closed in the middle of a frame",
    )
