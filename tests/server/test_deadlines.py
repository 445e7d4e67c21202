"""Request deadlines: a finished request is forgotten at once, not at its deadline.

Every request gets a deadline (`--request-timeout`). Keeping each finished one,
with its result, until then held tens of thousands of objects alive under load,
and the garbage collector paid for them: young-generation collections of
10-100 ms, which showed as the REST bench's p99."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from raftkv.kv import encode_put

from .test_commit_news import cluster, elect


def test_finished_requests_are_not_kept_until_their_deadline(tmp_path: Path) -> None:
    async def main() -> list[weakref.ref[Any]]:
        async with cluster(tmp_path, tick_ms=20, request_timeout_s=60.0) as nodes:
            leader = await elect(nodes)
            finished: list[weakref.ref[Any]] = []
            for k in range(20):
                write = leader.submit_write(encode_put(b"key%d" % k, b"value"))
                await write
                read = leader.submit_read()
                await read
                finished += [weakref.ref(write), weakref.ref(read)]
                del write, read
            await asyncio.sleep(0.2)  # Ten ticks; the deadlines are a minute away.
            return [ref for ref in finished if ref() is not None]

    assert asyncio.run(main()) == []
