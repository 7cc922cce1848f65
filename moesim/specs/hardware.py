"""GPU and system specifications, loaded from `topologies/` with a source for every number.

A spec value in YAML is `{value: ..., source: "...", note: "..."}`; the loader rejects a value
without a source. Data files use spec-sheet units in their keys (`_GBps`, `_TFLOPs`, `_GB`);
the properties below return SI (bytes, bytes/s, FLOP/s).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Generic, Literal, Optional, TypeVar

from pydantic import field_validator

from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.core.loader import Record, available, data_root, load_record, resolve

V = TypeVar("V")


class Sourced(Record, Generic[V]):
    """One external fact: its value and where it came from. `value: null` means not published."""

    value: Optional[V]
    source: str
    note: Optional[str] = None

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("source is empty; name the datasheet, paper or repository it came from")
        return text


class PositiveNumber(Sourced[float]):
    @field_validator("value")
    @classmethod
    def _positive(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and v <= 0:
            raise ValueError("must be positive; give the spec value or null if it is not published")
        return v


class Required(Sourced[V], Generic[V]):
    """A spec value the simulator cannot do without: null is rejected."""

    @field_validator("value")
    @classmethod
    def _present(cls, v: Optional[V]) -> V:
        if v is None:
            raise ValueError("this spec cannot be null; give the published value with its source")
        return v


class RequiredPositive(PositiveNumber):
    @field_validator("value")
    @classmethod
    def _present(cls, v: Optional[float]) -> float:
        if v is None:
            raise ValueError("this spec cannot be null; give the published value with its source")
        return v


class TensorThroughput(Record):
    """Dense (no 2:4 sparsity) tensor-core peak per GPU, per dtype family."""

    bf16: RequiredPositive
    fp8: RequiredPositive
    fp4: PositiveNumber


class LinkSpec(Record):
    generation: Sourced[int]
    links: Optional[Sourced[int]] = None
    per_direction_GBps: RequiredPositive


class GPUSpec(Record):
    """One GPU model: compute peaks, HBM and link endpoints."""

    id: str
    name: str
    short_name: Optional[str] = None  # what people call it in a sentence ("H100"); default: the id
    arch: Sourced[str]
    sm_version: Sourced[int]
    sm_count: Sourced[int]
    dense_TFLOPs: TensorThroughput
    hbm_capacity_GB: RequiredPositive
    hbm_usable_GiB: Optional[PositiveNumber] = None
    hbm_bandwidth_TBps: RequiredPositive
    hbm_measured_TBps: Optional[PositiveNumber] = None
    l2_cache_MB: Optional[PositiveNumber] = None
    boost_clock_MHz: Optional[PositiveNumber] = None
    nvlink: LinkSpec
    host_link: LinkSpec
    tdp_W: Optional[PositiveNumber] = None

    @property
    def capacity_bytes(self) -> float:
        """Memory the device reports as total (what frameworks budget against).

        Where no device-reported figure is published, the vendor label in GB (1e9 B) is used,
        which is the smaller, conservative reading.
        """
        if self.hbm_usable_GiB is not None and self.hbm_usable_GiB.value is not None:
            return self.hbm_usable_GiB.value * units.GiB
        return self.hbm_capacity_GB.value * units.GB

    @property
    def hbm_Bps(self) -> float:
        return self.hbm_bandwidth_TBps.value * units.TBps

    @property
    def spec_short_name(self) -> str:
        return self.short_name or self.id

    def peak_flops(self, dtype_family: str) -> Optional[float]:
        value = getattr(self.dense_TFLOPs, dtype_family).value
        return None if value is None else value * units.TFLOPS


class ScaleUp(Record):
    """The NVLink domain: which GPUs talk over NVLink switches, and how fast."""

    kind: Literal["nvlink"]
    domain_gpus: Required[int]
    per_gpu_GBps_per_direction: RequiredPositive
    switch_chips: Sourced[int]
    switch_trays: Optional[Sourced[int]] = None
    nvls_reduction_GBps: Optional[PositiveNumber] = None
    measured_p2p_GBps: Optional[PositiveNumber] = None


class ScaleOut(Record):
    """The NIC fabric between NVLink domains (one rail per NIC index)."""

    kind: Literal["ib", "roce"]
    nic: str
    nics_per_gpu: Required[int]
    nic_Gbps: RequiredPositive
    nic_effective_GBps: Optional[PositiveNumber] = None
    oversubscription: RequiredPositive

    @property
    def per_gpu_Bps(self) -> float:
        return self.nics_per_gpu.value * self.nic_Gbps.value * units.Gbps


class SystemSpec(Record):
    """A buildable unit of GPUs: a node (DGX/HGX) or a rack (NVL72), and how units join."""

    id: str
    name: str
    gpu: str
    gpus_per_node: Required[int]
    scale_up: ScaleUp
    scale_out: ScaleOut
    description: Optional[str] = None
    node_name: str = "node"  # what one `gpus_per_node` unit is called ("DGX H100 node", "compute tray")
    domain_name: Optional[str] = None  # an NVLink domain that spans nodes ("NVL72 rack"); None: one node
    calibration: Optional[str] = None  # a profile from `moesim calibrate` (name in topologies/calibration/ or path)
    hardware_profile: Optional[str] = None  # link latencies etc. (topologies/profiles/); default: the system id


class System(Record):
    """A system spec with its GPU spec resolved: what the rest of moesim consumes."""

    spec: SystemSpec
    gpu: GPUSpec

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def domain_gpus(self) -> int:
        return self.spec.scale_up.domain_gpus.value

    @property
    def gpus_per_node(self) -> int:
        return self.spec.gpus_per_node.value

    @property
    def node_label(self) -> str:
        """`8-GPU DGX H100 node`, `4-GPU compute tray`: a node always with its GPU count."""
        return f"{self.gpus_per_node}-GPU {self.spec.node_name}"

    def fleet_label(self, gpus: int) -> str:
        """`16 × H100 (2 DGX H100 nodes of 8 GPUs)`, `72 × GB200 (1 NVL72 rack)`: GPUs counted as GPUs,
        and the boxes they fill named as the system names them, so a GPU count never reads as a box
        count and a 4-GPU tray never passes for an 8-GPU node."""
        gpu, per_node, domain = self.gpu.spec_short_name, self.gpus_per_node, self.domain_gpus
        name, domain_name = self.spec.node_name, self.spec.domain_name
        if domain_name and domain > per_node and gpus % domain == 0:
            units = gpus // domain
            return f"{gpus} × {gpu} ({units} {domain_name}{'s' if units > 1 else ''})"
        if gpus < per_node:
            boxes = f"part of one {per_node}-GPU {name}"
        else:
            nodes = -(-gpus // per_node)
            boxes = f"{nodes} {name}{'s' if nodes > 1 else ''} of {per_node} GPUs"
            boxes += "" if gpus % per_node == 0 else ", the last one partly"
        if domain_name and domain > per_node:
            boxes += f", in a {domain}-GPU {domain_name}" if gpus < domain else f", across {domain}-GPU {domain_name}s"
        return f"{gpus} × {gpu} ({boxes})"


def gpus_dir() -> Path:
    return data_root() / "topologies" / "gpus"


def systems_dir() -> Path:
    return data_root() / "topologies" / "systems"


@lru_cache(maxsize=64)
def load_gpu(name_or_path: str) -> GPUSpec:
    return load_record(GPUSpec, resolve("gpu", name_or_path, gpus_dir()))


@lru_cache(maxsize=64)
def load_system(name_or_path: str) -> System:
    """Load a system by built-in name or from any YAML path, resolving its GPU by name."""
    path = resolve("system", name_or_path, systems_dir())
    spec = load_record(SystemSpec, path)
    try:
        gpu = load_gpu(spec.gpu)
    except MoesimError as exc:
        raise exc.located(file=str(path), field_prefix="gpu") from None
    domain = spec.scale_up.domain_gpus.value
    per_node = spec.gpus_per_node.value
    if domain % per_node and per_node % domain:
        raise MoesimError(f"NVLink domain of {domain} GPUs does not tile nodes of {per_node}",
                          file=str(path), field="scale_up.domain_gpus",
                          fix="make the domain a multiple or a divisor of gpus_per_node")
    return System(spec=spec, gpu=gpu)


def system_names() -> list[str]:
    return available(systems_dir())


def gpu_names() -> list[str]:
    return available(gpus_dir())
