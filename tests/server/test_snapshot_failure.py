"""A snapshot that fails (a full disk, say) leaves the node serving, and the next
automatic one waits (1 s, doubling up to a minute) instead of starting again at the
next apply: each attempt serialises the whole store."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

from raftkv.kv import encode_put

from .test_commit_news import cluster, elect


def test_a_failed_snapshot_is_retried_after_a_backoff(tmp_path: Path, monkeypatch: Any) -> None:
    async def main() -> None:
        async with cluster(tmp_path, tick_ms=20, snapshot_count_entries=20) as nodes:
            leader = await elect(nodes)
            storage = leader._storage
            write_snapshot_file = storage.write_snapshot_file
            attempts = []

            def full_disk(snapshot: Any) -> None:
                attempts.append(snapshot.metadata.index)
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(storage, "write_snapshot_file", full_disk)
            for k in range(200):  # Ten snapshots' worth, in well under a second.
                await asyncio.wait_for(leader.submit_write(encode_put(b"k%d" % k, b"v")), 10)
            assert len(attempts) == 1, attempts
            assert leader._snapshot_index == 0

            monkeypatch.setattr(storage, "write_snapshot_file", write_snapshot_file)
            await asyncio.sleep(1.1)
            await asyncio.wait_for(leader.submit_write(encode_put(b"after", b"v")), 10)
            for _ in range(100):
                if leader._snapshot_index > 0:
                    break
                await asyncio.sleep(0.05)
            assert leader._snapshot_index >= 200

    asyncio.run(main())
