"""raftkv.client: `Client` and `AsyncClient` for a raftkv cluster's Redis-protocol API,
and the `raftkv` command-line client (`python -m raftkv.client`)."""

from ._async import AsyncClient
from ._core import Member, Status
from ._sync import Client

__all__ = ["AsyncClient", "Client", "Member", "Status"]
