"""The simulated network between the nodes of a simulated cluster.

Theory of operation: the network never holds messages itself. When a node sends a
message, the cluster asks `Network.plan_delivery` when (if ever) each copy should
arrive; the answer is a list of delays in time units, empty when the message is
dropped and two long when it is duplicated. Different random delays reorder
messages. At delivery time the cluster asks `Network.link_is_up` again, so a
message already on the wire when a partition starts is lost with it.

Links are directed: `cut(a, b)` stops traffic from a to b only, which is how
one-way partitions are modelled. `heal()` restores every link and calm weather.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Weather:
    """How unreliable the links that are up behave."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    min_delay_units: int = 1
    max_delay_units: int = 4
    #: A straggler: a copy delayed far beyond the usual range, so that it arrives
    #: after many newer messages (stale appends, old votes, late responses).
    straggler_probability: float = 0.0
    straggler_delay_units: int = 200

    def __post_init__(self) -> None:
        assert 0.0 <= self.drop_probability <= 1.0
        assert 0.0 <= self.duplicate_probability <= 1.0
        assert 0.0 <= self.straggler_probability <= 1.0
        assert 0 <= self.min_delay_units <= self.max_delay_units
        assert self.straggler_delay_units >= self.max_delay_units


CALM = Weather()


class Network:
    """Link state and delivery planning; all randomness from the given rng."""

    def __init__(self, rng: random.Random, weather: Weather = CALM) -> None:
        self._rng = rng
        self.weather = weather
        self._cut_links: set[tuple[int, int]] = set()

    # --- link state ------------------------------------------------------------------

    def link_is_up(self, frm: int, to: int) -> bool:
        return (frm, to) not in self._cut_links

    @property
    def cut_links(self) -> frozenset[tuple[int, int]]:
        return frozenset(self._cut_links)

    def cut(self, frm: int, to: int) -> None:
        """Stop traffic from `frm` to `to` (one way)."""
        assert frm != to, "a node always reaches itself"
        self._cut_links.add((frm, to))

    def isolate(self, node: int, others: Iterable[int]) -> None:
        """Cut every link between `node` and each of `others`, both ways."""
        for other in others:
            if other != node:
                self._cut_links.add((node, other))
                self._cut_links.add((other, node))

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Cut every link between nodes of different groups, both ways."""
        sets = [set(group) for group in groups]
        for i, group in enumerate(sets):
            for other_group in sets[i + 1 :]:
                assert not group & other_group, "partition groups must be disjoint"
                for a in group:
                    for b in other_group:
                        self._cut_links.add((a, b))
                        self._cut_links.add((b, a))

    def heal_links(self) -> None:
        self._cut_links.clear()

    def heal(self) -> None:
        """Every link up and calm weather."""
        self._cut_links.clear()
        self.weather = CALM

    # --- delivery --------------------------------------------------------------------

    def plan_delivery(self, frm: int, to: int) -> list[int]:
        """Delays (time units) of the copies of one message that will arrive: none if
        the link is down or the message is dropped, two if it is duplicated."""
        if not self.link_is_up(frm, to):
            return []
        weather = self.weather
        rng = self._rng
        if weather.drop_probability and rng.random() < weather.drop_probability:
            return []
        copies = 1
        if weather.duplicate_probability and rng.random() < weather.duplicate_probability:
            copies = 2
        return [self._delay(weather) for _ in range(copies)]

    def _delay(self, weather: Weather) -> int:
        rng = self._rng
        if weather.straggler_probability and rng.random() < weather.straggler_probability:
            return rng.randint(weather.max_delay_units, weather.straggler_delay_units)
        return rng.randint(weather.min_delay_units, weather.max_delay_units)
