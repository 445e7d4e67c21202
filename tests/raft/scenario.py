"""Scenario scripts: a small text format for cluster stories, easy to review as diffs.

A script is a sequence of commands, one per line; `#` starts a comment. Commands
that observe the cluster print their output right after them, indented by two
spaces. Running a script re-creates the whole text (commands, comments and
output); the test compares it with the file, so a change of behaviour shows as a
diff of the expected output. `RAFTKV_SCENARIO_REWRITE=1` rewrites the files.

Commands (node ids are integers):

    cluster N [learners=4,5] [seed=S] [pre_vote=off] [check_quorum=off]
    campaign ID             propose ID DATA          read ID CONTEXT
    transfer LEADER TO      add LEADER ID            add-learner LEADER ID
    remove LEADER ID        compact ID               tick [N]
    stabilize               isolate ID               cut A B
    partition 1,2 3,4,5     recover
    status                  log                      applied
    reads ID                messages                 skip-messages

`propose`, `read`, `transfer` and the membership commands stabilize the network
afterwards; an error they raise is printed as `error: <type>: <message>`.
`messages` prints the messages delivered since the previous `messages` (or
`skip-messages`, which prints nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from raftkv.raft import ConfChange, ConfChangeType, Config, EntryType, Message, RaftError

from .network import Network

REWRITE = os.environ.get("RAFTKV_SCENARIO_REWRITE") == "1"


class Scenario:
    def __init__(self) -> None:
        self.net: Network | None = None
        self.messages_seen = 0

    @property
    def cluster(self) -> Network:
        assert self.net is not None, "the script must start with `cluster N`"
        return self.net

    def run(self, text: str) -> str:
        """Run a script; return its text with the output of every command."""
        out: list[str] = []
        for line in text.splitlines():
            if line.startswith("  "):
                continue  # previous output: regenerated below
            out.append(line)
            command = line.split("#", 1)[0].split()
            if not command:
                continue
            try:
                printed = self.execute(command[0], command[1:])
            except RaftError as error:
                printed = [f"error: {type(error).__name__}: {error}"]
            out.extend("  " + p for p in printed)
        return "\n".join(out) + "\n"

    def execute(self, name: str, args: list[str]) -> list[str]:
        handler: Callable[[list[str]], list[str] | None] | None = getattr(
            self, "do_" + name.replace("-", "_"), None
        )
        if handler is None:
            raise ValueError(f"unknown scenario command {name!r}")
        return handler(args) or []

    # --- building and driving ----------------------------------------------------

    def do_cluster(self, args: list[str]) -> None:
        size = int(args[0])
        options = dict(arg.split("=", 1) for arg in args[1:])
        learners = [int(i) for i in options.pop("learners", "").split(",") if i]
        seed = int(options.pop("seed", "0"))
        flags = {
            name: options.pop(name) != "off"
            for name in ("pre_vote", "check_quorum")
            if name in options
        }
        assert not options, f"unknown cluster options {options}"
        self.net = Network(
            size,
            seed=seed,
            learners=learners,
            configure=lambda node_id: Config(id=node_id, **flags),
        )

    def do_campaign(self, args: list[str]) -> None:
        self.cluster.campaign(int(args[0]))

    def do_propose(self, args: list[str]) -> None:
        self.cluster.propose(int(args[0]), args[1].encode())

    def do_read(self, args: list[str]) -> None:
        self.cluster.nodes[int(args[0])].raw.read_index(args[1].encode())
        self.cluster.stabilize()

    def do_transfer(self, args: list[str]) -> None:
        self.cluster.nodes[int(args[0])].raw.transfer_leader(int(args[1]))
        self.cluster.stabilize()

    def _conf_change(self, kind: ConfChangeType, args: list[str]) -> None:
        leader, node_id = int(args[0]), int(args[1])
        if node_id not in self.cluster.nodes:
            self.cluster.add_node(node_id)
        self.cluster.propose_conf_change(leader, ConfChange(kind, node_id))

    def do_add(self, args: list[str]) -> None:
        self._conf_change(ConfChangeType.ADD_NODE, args)

    def do_add_learner(self, args: list[str]) -> None:
        self._conf_change(ConfChangeType.ADD_LEARNER, args)

    def do_remove(self, args: list[str]) -> None:
        self._conf_change(ConfChangeType.REMOVE_NODE, args)

    def do_compact(self, args: list[str]) -> None:
        node_id = int(args[0])
        self.cluster.compact(node_id, self.cluster.nodes[node_id].raw.status().applied)

    def do_tick(self, args: list[str]) -> None:
        self.cluster.tick_all(int(args[0]) if args else 1)

    def do_stabilize(self, args: list[str]) -> None:
        self.cluster.stabilize()

    def do_isolate(self, args: list[str]) -> None:
        self.cluster.isolate(int(args[0]))

    def do_cut(self, args: list[str]) -> None:
        self.cluster.cut(int(args[0]), int(args[1]))

    def do_partition(self, args: list[str]) -> None:
        self.cluster.partition(*[{int(i) for i in group.split(",")} for group in args])

    def do_recover(self, args: list[str]) -> None:
        self.cluster.recover()

    # --- observing -------------------------------------------------------------------

    def do_status(self, args: list[str]) -> list[str]:
        lines = []
        for node_id, node in self.cluster.nodes.items():
            status = node.raw.status()
            lines.append(
                f"{node_id}: {status.soft_state.role.name.lower()} term={status.hard_state.term}"
                f" lead={status.soft_state.leader_id} commit={status.hard_state.commit}"
                f" applied={status.applied} voters={','.join(map(str, status.conf_state.voters))}"
                + (
                    f" learners={','.join(map(str, status.conf_state.learners))}"
                    if status.conf_state.learners
                    else ""
                )
            )
        return lines

    def do_log(self, args: list[str]) -> list[str]:
        lines = []
        for node_id, node in self.cluster.nodes.items():
            storage = node.storage
            first, last = storage.first_index(), storage.last_index()
            entries = storage.entries(first, last + 1) if last >= first else []
            shown = []
            for entry in entries:
                if entry.type == EntryType.CONF_CHANGE:
                    change = ConfChange.decode(entry.data)
                    data = f"{change.type.name.lower()}:{change.node_id}"
                else:
                    data = entry.data.decode() or "-"
                shown.append(f"{entry.index}/{entry.term}:{data}")
            prefix = f"[snapshot {first - 1}] " if first > 1 else ""
            lines.append(f"{node_id}: {prefix}{' '.join(shown)}".rstrip())
        return lines

    def do_applied(self, args: list[str]) -> list[str]:
        return [
            f"{node_id}: {' '.join(d.decode() for d in node.state)}".rstrip()
            for node_id, node in self.cluster.nodes.items()
        ]

    def do_reads(self, args: list[str]) -> list[str]:
        node = self.cluster.nodes[int(args[0])]
        return [f"index={rs.index} context={rs.request_ctx.decode()}" for rs in node.read_states]

    def do_messages(self, args: list[str]) -> list[str]:
        delivered = self.cluster.delivered[self.messages_seen :]
        self.messages_seen = len(self.cluster.delivered)
        return [describe(m) for m in delivered]

    def do_skip_messages(self, args: list[str]) -> None:
        self.messages_seen = len(self.cluster.delivered)


def describe(m: Message) -> str:
    parts = [f"{m.frm}->{m.to} {m.type.name} term={m.term}"]
    if m.type.name in ("APP", "VOTE", "PRE_VOTE"):
        parts.append(f"at={m.index}/{m.log_term}")
    if m.entries:
        parts.append(f"entries={m.entries[0].index}..{m.entries[-1].index}")
    if m.type.name in ("APP", "HEARTBEAT") and m.commit:
        parts.append(f"commit={m.commit}")
    if m.type.name == "APP_RESP":
        parts.append(f"index={m.index}")
    if m.reject:
        parts.append(f"reject hint={m.reject_hint}")
    if m.snapshot is not None:
        parts.append(f"snapshot={m.snapshot.metadata.index}/{m.snapshot.metadata.term}")
    return " ".join(parts)


def check_script(path: Path) -> tuple[str, str]:
    """Run the script at `path`; return (expected, actual). Rewrites the file when
    RAFTKV_SCENARIO_REWRITE=1."""
    expected = path.read_text()
    actual = Scenario().run(expected)
    if REWRITE and actual != expected:
        path.write_text(actual)
        return actual, actual
    return expected, actual
