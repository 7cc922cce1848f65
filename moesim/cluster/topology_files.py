"""Records of the topologies/ data files, so a bad profile, fabric or custom topology fails on load.

Hardware profiles (`topologies/profiles/<system>.yaml`: per-hop latencies and the GPU-NIC link a
system file does not hold), fabrics (`topologies/fabrics/<name>.yaml`: scale-out switch port
counts) and hand-written custom topologies (nodes and links; moesim.cluster.topology turns them
into a graph). Latencies are DS-ISCA Table 5, split over the hops of moesim's routes so each path
total reproduces the measurement.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator

from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, load_record, resolve
from moesim.specs.hardware import Required, RequiredPositive, Sourced

# ----------------------------------------------------------------------------- data files

class NonNegative(Sourced[float]):
    @field_validator("value")
    @classmethod
    def _non_negative(cls, v: Optional[float]) -> float:
        if v is None or v < 0:
            raise ValueError("must be a number >= 0; give the measured or derived value with its source")
        return v


class PositiveInt(Sourced[int]):
    @field_validator("value")
    @classmethod
    def _positive(cls, v: Optional[int]) -> int:
        if v is None or v < 1:
            raise ValueError("must be a whole number >= 1; give the value with its source")
        return v


class HopLatencies(Record):
    """One-way latency per hop, microseconds, by the kind of link the hop crosses."""

    nvlink: NonNegative
    pcie: NonNegative
    host: NonNegative
    ib_leaf: NonNegative
    ib_spine: NonNegative
    roce_leaf: NonNegative
    roce_spine: NonNegative


class MeasuredLatencies(Record):
    """End-to-end latencies a profile was derived from (kept to check the split against)."""

    nvlink: Optional[NonNegative] = None
    ib_same_leaf: Optional[NonNegative] = None
    ib_cross_leaf: Optional[NonNegative] = None
    roce_same_leaf: Optional[NonNegative] = None
    roce_cross_leaf: Optional[NonNegative] = None


class HardwareProfile(Record):
    """Per-system link facts the system file does not hold: hop latencies, the GPU-NIC link."""

    id: str
    gpu_nic_GBps: RequiredPositive
    host_link_kind: Required[Literal["pcie", "c2c"]]
    hop_latency_us: HopLatencies
    measured_64B_us: Optional[MeasuredLatencies] = None


class FabricSpec(Record):
    """Port counts of the scale-out switches."""

    id: str
    name: str
    description: Optional[str] = None
    switch_ports: PositiveInt
    leaf_down_ports: PositiveInt


def profiles_dir() -> Path:
    return data_root() / "topologies" / "profiles"


def fabrics_dir() -> Path:
    return data_root() / "topologies" / "fabrics"


@lru_cache(maxsize=64)
def load_profile(name_or_path: str) -> HardwareProfile:
    """The hardware profile of a system, by system id (`dgx-h100`) or YAML path."""
    return load_record(HardwareProfile, resolve("profile", name_or_path, profiles_dir()))


@lru_cache(maxsize=16)
def load_fabric(name_or_path: str) -> FabricSpec:
    path = resolve("fabric", name_or_path, fabrics_dir())
    spec = load_record(FabricSpec, path)
    if spec.leaf_down_ports.value >= spec.switch_ports.value:
        raise MoesimError(f"leaf_down_ports {spec.leaf_down_ports.value} leaves no uplink port on a "
                          f"{spec.switch_ports.value}-port switch", file=str(path), field="leaf_down_ports",
                          fix="use fewer down ports than switch_ports (half is non-blocking)")
    return spec


# ----------------------------------------------------------------------------- custom topologies

class CustomNode(Record):
    id: Annotated[str, Field(min_length=1)]
    kind: Literal["gpu", "nvswitch", "nic", "leaf", "spine", "host"]


class CustomLink(Record):
    a: str
    b: str
    capacity_GBps: Annotated[float, Field(gt=0)]
    latency_us: Annotated[float, Field(ge=0)]
    kind: Literal["nvlink", "pcie", "ib", "roce", "c2c"]
    bidirectional: bool = True


class CustomTopology(Record):
    """A hand-written graph: GPUs are numbered in the order they are listed."""

    name: Optional[str] = None
    description: Optional[str] = None
    nodes: list[CustomNode]
    links: list[CustomLink]
