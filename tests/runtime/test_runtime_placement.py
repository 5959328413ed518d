"""NEURON_RT_VISIBLE_CORES parsing and laying workers out over the visible cores."""

from __future__ import annotations

import os

import pytest

from neuron_runtime.config import Placement
from neuron_runtime.placement import PlacementError, format_cores, parse_visible_cores, plan, visible_cores


@pytest.mark.parametrize(
    ("text", "cores"),
    [("0", [0]), ("0-3", [0, 1, 2, 3]), ("4,5", [4, 5]), ("0,2-3", [0, 2, 3]), (" 6 - 7 , 9", [6, 7, 9])],
)
def test_parse_visible_cores(text: str, cores: list[int]) -> None:
    assert parse_visible_cores(text) == cores


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("a", "not a core index"),
        ("3-1", "descending"),
        ("1,1", "twice"),
        ("0-", "not a core"),
        ("-1", "not a core"),
        ("99999", "0..4095"),
    ],
)
def test_parse_rejects_malformed(text: str, fragment: str) -> None:
    with pytest.raises(PlacementError, match=fragment):
        parse_visible_cores(text)


def test_format_round_trips() -> None:
    for text in ["0-3", "4,5", "0,2-3,7"]:
        cores = parse_visible_cores(text)
        assert parse_visible_cores(format_cores(cores)) == cores
    assert format_cores([0, 1, 2, 5]) == "0-2,5"


def test_pinned_plan_uses_relative_indices() -> None:
    slots = plan(Placement(workers=2, cores_per_worker=2), [4, 5, 6, 7])
    assert [(s.start_nc, s.nc_count, s.cores, s.shared_model) for s in slots] == [
        (0, 2, (4, 5), False),
        (2, 2, (6, 7), False),
    ]


def test_multicore_plan_has_one_executor_per_core_sharing_one_copy() -> None:
    slots = plan(Placement(mode="multicore", workers=7), [2, 3])
    assert [(s.start_nc, s.cores, s.shared_model) for s in slots] == [(0, (2,), True), (1, (3,), True)]


def test_infeasible_placement_says_what_is_missing() -> None:
    with pytest.raises(PlacementError, match=r"2 workers x 2 cores = 4 cores, but only 3 are visible \(0-2\)"):
        plan(Placement(workers=2, cores_per_worker=2), [0, 1, 2])


def test_neuron_needs_visible_cores() -> None:
    with pytest.raises(PlacementError, match="NEURON_RT_VISIBLE_CORES is not set"):
        visible_cores("inf2", {})
    assert visible_cores("inf2", {"NEURON_RT_VISIBLE_CORES": "8-9"}) == [8, 9]


def test_cpu_defaults_to_affinity_and_refuses_foreign_cpus() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert visible_cores("cpu", {}) == allowed
    with pytest.raises(PlacementError, match="outside this process's affinity"):
        visible_cores("cpu", {"NEURON_RT_VISIBLE_CORES": str(max(allowed) + 100)})
