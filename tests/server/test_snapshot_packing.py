"""A snapshot's window of applied requests is packed chunk by chunk (so the event
loop gets the GIL back between chunks) into exactly what one msgpack call makes."""

import msgpack
import pytest

from raftkv.server._node import pack_list_in_chunks


@pytest.mark.parametrize("count", [0, 1, 15, 16, 1999, 2000, 2001, 65535, 65536, 100_001])
def test_chunked_packing_is_msgpack_of_the_whole_list(count: int) -> None:
    rows = [(index, (index % 5 + 1, index * 7919)) for index in range(count)]
    assert b"".join(pack_list_in_chunks(rows)) == msgpack.packb(rows, use_bin_type=True)
