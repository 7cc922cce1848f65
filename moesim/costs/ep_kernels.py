"""EP dispatch/combine kernel time: link rates, the kernel's SM budget and fixed costs.

One formula serves `moesim validate` (EP cases) and the simulator (every MoE layer's dispatch
and combine). Parameters are named in `topologies/kernels/ep.yaml` and fitted by `moesim
calibrate --cases`; callers pass their values (a kernel profile's `values()`).

    normal:      t = fixed[lib] + (api[lib] + api_net·(ranks span NVLink domains))·(torch-API timing) + max(t_link, t_sm)
                 t_link = max(t_nvlink_spec / link_eff[arch, nvlink], t_rdma_spec / link_eff[arch, rdma])
                 t_sm   = max(bytes_nvlink, bytes_rdma over the same path's rate) / (S · sm_rate[arch, path] · speedup[lib])
    low latency: t = ll_fixed[arch] + max(t_nvlink_spec / ll_eff[arch, nvlink], t_rdma_spec / ll_eff[arch, rdma])

`t_*_spec` is the time of the exchange's NVLink (resp. RDMA) bytes at spec link rates on the
most loaded link (`load_time`); `bytes_*` what the busiest GPU sends or receives on that path.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np

from moesim.core import units
from moesim.core.loader import data_root, read_yaml
from moesim.costs.collectives import Fabric, build_fabric, load_time

REFERENCE_LIBRARY = "deepep-v1"  # per-SM copy rates are DeepEP V1's; other libraries scale them
SPEC_RATES = (("nvlink", 1.0), ("ib", 1.0), ("roce", 1.0), ("pcie", 1.0), ("c2c", 1.0))


@dataclass(frozen=True)
class Exchange:
    """The parameter-free facts of one EP exchange."""

    t_nvlink_s: float
    t_rdma_s: float
    nvlink_bytes: float
    rdma_bytes: float


@dataclass(frozen=True)
class Kernel:
    """How the exchange runs: GPU architecture, library, SM budget, mode, and what the timer includes."""

    arch: str
    library: str
    sms: float
    low_latency: bool = False
    torch_api: bool = False
    multi_node: bool = False  # ranks span NVLink domains: the metadata exchange crosses the network


@lru_cache(maxsize=1)
def library_rules() -> dict:
    """`topologies/kernels/libraries/ep.yaml`: timing and transport per library version, and the
    library and SM budget the simulator assumes."""
    data, _ = read_yaml(data_root() / "topologies" / "kernels" / "libraries" / "ep.yaml")
    return data


def spec_fabric(system, gpus: int) -> Fabric:
    return build_fabric(system, gpus, SPEC_RATES)


def busiest(matrix: np.ndarray) -> float:
    """Bytes the busiest GPU sends or receives (off-diagonal)."""
    m = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(m, 0.0)
    return float(max(m.sum(axis=1).max(), m.sum(axis=0).max())) if m.size else 0.0


def matrix_time(fabric: Fabric, matrix: np.ndarray) -> float:
    src, dst = np.nonzero(matrix)
    return load_time(fabric, src, dst, matrix[src, dst]) if len(src) else 0.0


def exchange(fabric: Fabric, nvlink: np.ndarray, rdma: np.ndarray) -> Exchange:
    """`fabric` at spec rates (`spec_fabric`); byte matrices [src GPU, dst GPU] per path."""
    return Exchange(matrix_time(fabric, nvlink), matrix_time(fabric, rdma), busiest(nvlink), busiest(rdma))


def kernel_time(ex: Exchange, k: Kernel) -> Callable[[Mapping[str, float]], float]:
    """Seconds of the exchange as a function of parameter values. A path the exchange does not
    use reads no parameter, so a fit does not credit that parameter with the case."""
    a, us, gbps = k.arch, units.us, units.GBps
    if k.low_latency:
        def low_latency(v: Mapping[str, float]) -> float:
            link = max(ex.t_nvlink_s / v[f"ep.ll_link_eff.{a}.nvlink"] if ex.t_nvlink_s else 0.0,
                       ex.t_rdma_s / v[f"ep.ll_link_eff.{a}.rdma"] if ex.t_rdma_s else 0.0)
            return v[f"ep.ll_fixed_us.{a}"] * us + link
        return low_latency
    sms, lib = k.sms, k.library

    def normal(v: Mapping[str, float]) -> float:
        link = max(ex.t_nvlink_s / v[f"ep.link_eff.{a}.nvlink"] if ex.t_nvlink_s else 0.0,
                   ex.t_rdma_s / v[f"ep.link_eff.{a}.rdma"] if ex.t_rdma_s else 0.0)
        per_sm = sms * (v[f"ep.sm_speedup.{lib}"] if lib != REFERENCE_LIBRARY else 1.0) * gbps
        sm = max(ex.nvlink_bytes / (per_sm * v[f"ep.sm_rate_GBps.{a}.nvlink"]) if ex.nvlink_bytes else 0.0,
                 ex.rdma_bytes / (per_sm * v[f"ep.sm_rate_GBps.{a}.rdma"]) if ex.rdma_bytes else 0.0)
        fixed = v[f"ep.fixed_us.{lib}"] * us + (v[f"ep.api_us.{lib}"] * us if k.torch_api else 0.0)
        if k.torch_api and k.multi_node:
            fixed += v["ep.api_net_us"] * us
        return fixed + max(link, sm)
    return normal


def step_exchange_times(fabric: Fabric, traffic, domain: int, arch: str, values: Mapping[str, float], *,
                        host_sync: bool) -> tuple[float, float]:
    """Seconds of one MoE layer's dispatch and combine in a simulated step, with the library and SM
    budget of `libraries/ep.yaml` (simulate); combine mirrors dispatch with BF16 bytes per token.
    `fabric` is the step's fabric (its GPU count is reused at spec rates)."""
    rules = library_rules()["simulate"]
    spec = spec_fabric(fabric.system, fabric.gpus)
    g = traffic.dispatch_bytes.shape[0]
    kernel = Kernel(arch, rules["library"], float(rules["sms"]["value"]), torch_api=host_sync, multi_node=g > domain)
    node = np.arange(g) // domain
    same = node[:, None] == node[None, :]
    ratio = traffic.combine_bytes.sum() / max(traffic.dispatch_bytes.sum(), 1.0)
    out = []
    for direct, rdma, forward in ((traffic.dispatch_bytes, traffic.rdma_bytes, traffic.nvlink_forward_bytes),
                                  (traffic.combine_bytes, traffic.rdma_bytes.T * ratio,
                                   traffic.nvlink_forward_bytes.T * ratio)):
        if g <= domain:
            nv, net = direct, np.zeros_like(direct)
        else:
            nv, net = np.where(same, direct, 0.0) + forward, rdma
        out.append(kernel_time(exchange(spec, nv, net), kernel)(values))
    return out[0], out[1]
