"""raftkv.server: the node runtime, its REST and RESP APIs, and the raftkvd command."""

from ._app import Server
from ._node import Node, StartupError
from ._options import NodeOptions, OptionsError

__all__ = ["Node", "NodeOptions", "OptionsError", "Server", "StartupError"]
