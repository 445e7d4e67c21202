"""A membership change that a follower forwards, then forwards again because it was
not applied in time, is answered by how the first copy ends, not refused.

The first copy may be in the follower's own log, unapplied, when the second goes:
the core then refuses the second ("a membership change is already in progress"),
since only one change may be pending. Answering the client 409 ("refused; retry")
would be wrong: the first copy still commits, and the retried request then finds
the change made already.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from raftkv.raft import ConfChangeType, Message, MessageType
from raftkv.server._node import Node
from raftkv.transport import _transport

from .test_commit_news import cluster, elect


def test_a_retried_change_whose_first_copy_is_pending_waits_for_it(
    tmp_path: Path, monkeypatch: Any
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, tick_ms=20, request_timeout_s=10.0) as nodes:
            leader = await elect(nodes)
            follower, gone = (node for node in nodes if node is not leader)
            await gone.stop()  # The leader now needs the follower to commit anything.
            # The follower's acknowledgements are lost: it holds the change in its
            # log, unapplied, while it keeps following the leader.
            holding = True
            write_batch = _transport._Peer.write_batch

            def dropping(peer: Any, link: Any, batch: list[Message]) -> None:
                if holding and peer.owner is follower._transport:
                    batch = [m for m in batch if m.type is not MessageType.APP_RESP]
                if batch:
                    write_batch(peer, link, batch)

            monkeypatch.setattr(_transport._Peer, "write_batch", dropping)
            change = asyncio.ensure_future(
                follower.change_membership(ConfChangeType.REMOVE_NODE, gone.id)
            )
            await until(lambda: has_pending_change(follower))
            # Past the follower's retry: it forwarded the change again.
            await asyncio.sleep(follower._retry_after_s * 3)
            assert not change.done(), change.exception()
            holding = False
            conf_state = await asyncio.wait_for(change, 10)
            assert gone.id not in conf_state.voters
            assert gone.id not in leader.status()["progress"]

    asyncio.run(main())


def has_pending_change(node: Node) -> bool:
    return bool(node._raw._raft.log.has_pending_conf_change(False))


async def until(condition: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")
