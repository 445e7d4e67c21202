"""A state machine wrapper that numbers entries, so tests read as command lists."""

from raftkv.kv import KvConfig, KvStateMachine, Result


class Applier:
    def __init__(self, config: KvConfig | None = None) -> None:
        self.machine = KvStateMachine(config)
        self.index = 0

    def __call__(self, data: bytes) -> Result:
        self.index += 1
        return self.machine.apply(self.index, data)
