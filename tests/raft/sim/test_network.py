"""The simulated network: links, partitions and delivery planning."""

from __future__ import annotations

import random

from .network import CALM, Network, Weather


def test_calm_network_delivers_every_message_once_within_the_delay_range() -> None:
    network = Network(random.Random(1))
    for _ in range(1000):
        delays = network.plan_delivery(1, 2)
        assert len(delays) == 1
        assert CALM.min_delay_units <= delays[0] <= CALM.max_delay_units


def test_a_one_way_cut_blocks_only_that_direction() -> None:
    network = Network(random.Random(1))
    network.cut(1, 2)
    assert not network.link_is_up(1, 2)
    assert network.link_is_up(2, 1)
    assert network.plan_delivery(1, 2) == []
    assert len(network.plan_delivery(2, 1)) == 1


def test_isolate_cuts_both_directions_to_every_other_node() -> None:
    network = Network(random.Random(1))
    network.isolate(2, [1, 2, 3])
    assert network.cut_links == {(2, 1), (1, 2), (2, 3), (3, 2)}
    assert network.link_is_up(1, 3)


def test_partition_cuts_between_groups_but_not_inside_them() -> None:
    network = Network(random.Random(1))
    network.partition([{1, 2}, {3, 4, 5}])
    assert network.link_is_up(1, 2)
    assert network.link_is_up(4, 5)
    assert not network.link_is_up(2, 3)
    assert not network.link_is_up(5, 1)
    assert len(network.cut_links) == 2 * 2 * 3


def test_heal_restores_every_link_and_calm_weather() -> None:
    network = Network(random.Random(1), Weather(drop_probability=1.0))
    network.partition([{1}, {2, 3}])
    network.heal()
    assert network.cut_links == frozenset()
    assert network.weather == CALM
    assert len(network.plan_delivery(1, 2)) == 1


def test_bad_weather_drops_duplicates_and_delays_at_the_configured_rates() -> None:
    weather = Weather(
        drop_probability=0.2,
        duplicate_probability=0.1,
        min_delay_units=1,
        max_delay_units=5,
        straggler_probability=0.05,
        straggler_delay_units=100,
    )
    network = Network(random.Random(7), weather)
    plans = [network.plan_delivery(1, 2) for _ in range(20_000)]
    dropped = sum(1 for plan in plans if not plan)
    duplicated = sum(1 for plan in plans if len(plan) == 2)
    delays = [delay for plan in plans for delay in plan]
    stragglers = sum(1 for delay in delays if delay > 5)
    assert 0.18 < dropped / len(plans) < 0.22
    assert 0.07 < duplicated / (len(plans) - dropped) < 0.13
    assert 0.03 < stragglers / len(delays) < 0.07
    assert min(delays) >= 1
    assert max(delays) <= 100


def test_the_same_seed_plans_the_same_deliveries() -> None:
    weather = Weather(drop_probability=0.3, duplicate_probability=0.3, max_delay_units=9)
    first = Network(random.Random(42), weather)
    second = Network(random.Random(42), weather)
    assert [first.plan_delivery(1, 2) for _ in range(200)] == [
        second.plan_delivery(1, 2) for _ in range(200)
    ]
