"""Membership change requests are answered by what the cluster does with them.

- A change that a follower forwards, then forwards again because it was not applied
  in time, is answered by how the first copy ends, not refused. The first copy may
  be in the follower's own log, unapplied, when the second goes: the core then
  refuses the second ("a membership change is already in progress"), since only one
  change may be pending. Answering the client 409 ("refused; retry") would be
  wrong: the first copy still commits, and the retried request then finds the
  change made already.
- A node checks a change against the membership as of the request, not against its
  own view, which may lag (a node that just joined, or one cut off for a while):
  it first catches up to the leader's commit index, as for a linearizable read.
  The member list is such a read too, unless asked for as serializable.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from raftkv import errors
from raftkv.raft import ConfChangeType, Message, MessageType
from raftkv.server._http import Request, Response
from raftkv.server._node import Node
from raftkv.server._rest import RestApi
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


def get(target: str) -> Request:
    path, _, query = target.partition("?")
    return Request("GET", path, query, b"", "HTTP/1.1", True)


def member_ids(response: Response) -> list[int]:
    assert response.status == 200, response
    return [member["id"] for member in json.loads(response.body)["members"]]


def has_pending_change(node: Node) -> bool:
    return bool(node._raw._raft.log.has_pending_conf_change(False))


class CutOff:
    """Every message from and to `node` is lost until `restore()`."""

    def __init__(self, node: Node, monkeypatch: Any) -> None:
        self.cut = True
        write_batch = _transport._Peer.write_batch

        def cutting(peer: Any, link: Any, batch: list[Message]) -> None:
            if not self.cut or (peer.owner is not node._transport and peer.id != node.id):
                write_batch(peer, link, batch)

        monkeypatch.setattr(_transport._Peer, "write_batch", cutting)

    def restore(self) -> None:
        self.cut = False


async def until(condition: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_a_lagging_node_checks_a_change_against_the_current_membership(
    tmp_path: Path, monkeypatch: Any
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, tick_ms=20, request_timeout_s=10.0) as nodes:
            leader = await elect(nodes)
            lagging = next(node for node in nodes if node is not leader)
            link = CutOff(lagging, monkeypatch)
            # Node 4 joins while the lagging node hears nothing (it never starts: the
            # other two still make a majority of the old membership).
            await leader.change_membership(ConfChangeType.ADD_NODE, 4, "http://127.0.0.1:1")
            assert 4 not in lagging.status()["progress"] and len(lagging.members) == 3
            # The member list, by default, waits to catch up too; a serializable one
            # is this node's view.
            api = RestApi(lagging)
            listing = asyncio.ensure_future(api.handle(get("/v1/members")))
            stale = await api.handle(get("/v1/members?consistency=serializable"))
            assert member_ids(stale) == [node.id for node in nodes]
            removal = asyncio.ensure_future(
                lagging.change_membership(ConfChangeType.REMOVE_NODE, 4)
            )
            await asyncio.sleep(0.3)
            # Not refused as "not a member": it waits to catch up first.
            assert not removal.done(), removal.exception()
            assert not listing.done()
            link.restore()
            assert member_ids(await asyncio.wait_for(listing, 10))[-1] == 4
            conf_state = await asyncio.wait_for(removal, 10)
            assert 4 not in conf_state.voters
            assert sorted(conf_state.voters) == sorted(node.id for node in nodes)

    asyncio.run(main())


def test_a_bad_node_id_or_url_is_refused_at_once_even_without_a_leader(tmp_path: Path) -> None:
    async def main() -> None:
        # Ticks of a second: no leader for the test's duration.
        async with cluster(tmp_path, tick_ms=1000, request_timeout_s=10.0) as nodes:
            node = nodes[0]
            assert node.leader_id == 0
            for change_type, node_id, url in [
                (ConfChangeType.ADD_NODE, 4, "not a url"),
                (ConfChangeType.ADD_NODE, 0, "http://127.0.0.1:1"),
                (ConfChangeType.REMOVE_NODE, -1, ""),
            ]:
                with pytest.raises(errors.InvalidRequest):
                    await asyncio.wait_for(node.change_membership(change_type, node_id, url), 1)

    asyncio.run(main())


def test_a_lagging_node_checks_a_transfer_against_the_current_voters(
    tmp_path: Path, monkeypatch: Any
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, tick_ms=20, request_timeout_s=3.0) as nodes:
            leader = await elect(nodes)
            lagging, gone = (node for node in nodes if node is not leader)
            link = CutOff(lagging, monkeypatch)
            await leader.change_membership(ConfChangeType.REMOVE_NODE, gone.id)
            assert gone.id in lagging._raw.status().conf_state.voters  # Its view lags.
            transfer = asyncio.ensure_future(lagging.transfer_leader(gone.id))
            await asyncio.sleep(0.3)
            assert not transfer.done(), transfer.exception()
            link.restore()
            # Refused as soon as it knows, rather than forwarded, dropped by the
            # leader, and answered "did not move in time".
            with pytest.raises(errors.InvalidRequest, match="not a voter"):
                await asyncio.wait_for(transfer, 10)

    asyncio.run(main())
