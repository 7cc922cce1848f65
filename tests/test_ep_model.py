"""The EP dispatch/combine kernel model (costs/ep_kernels) and its validation targets (validation/ep_model)."""
from __future__ import annotations

import numpy as np
import pytest

from moesim.calibration.kernel_fit import bind
from moesim.calibration.kernel_params import definitions
from moesim.costs.collectives import build_fabric, flows_time, load_time
from moesim.costs.ep_kernels import Exchange, Kernel, kernel_time
from moesim.validation import ep_model
from moesim.validation.cases import Case, Skip


def defaults() -> dict[str, float]:
    return {n: d.value for n, d in definitions().items()}


def case(**over) -> Case:
    params = {"tokens_per_gpu": 1024, "hidden": 2048, "topk": 4, "experts": 64, "dtype": "bf16", "mode": "normal",
              "sms": 16, "timing": "kernel_only", "library": "deepep-v1"}
    params.update(over.pop("params", {}))
    data = {"id": "ep", "what": "ep_dispatch", "system": "gb200-nvl72", "gpus": 8, "metric": "time_us",
            "measured": 100.0, "source": "test", "params": params}
    data.update(over)
    return Case(**data)


def predict(c: Case, values=None) -> float:
    values = values or defaults()
    return bind(ep_model.prepare(c), values).predict(values)


def test_more_sms_never_slower_until_the_link_binds():
    times = [predict(case(params={"sms": s})) for s in (2, 4, 8, 16, 32, 64, 128)]
    assert all(b <= a for a, b in zip(times, times[1:]))
    assert times[0] > 4 * times[-1]            # SM-bound at 2 SMs
    assert times[-1] == pytest.approx(times[-2])  # link-bound at 64+ SMs


def test_torch_api_timing_adds_the_host_cost_and_more_across_domains():
    v = defaults()
    kernel = predict(case())
    api = predict(case(params={"timing": "torch_api"}))
    assert api - kernel == pytest.approx(v["ep.api_us.deepep-v1"], rel=1e-9)
    ex = Exchange(t_nvlink_s=1e-4, t_rdma_s=2e-4, nvlink_bytes=1e6, rdma_bytes=1e6)
    one = kernel_time(ex, Kernel("hopper", "deepep-v1", 24, torch_api=True))(v)
    two = kernel_time(ex, Kernel("hopper", "deepep-v1", 24, torch_api=True, multi_node=True))(v)
    assert (two - one) * 1e6 == pytest.approx(v["ep.api_net_us"])


def test_hybrid_ep_copies_faster_per_sm_by_its_named_speedup():
    v = dict(defaults(), **{"ep.sm_speedup.hybrid-ep": 2.0})
    ex = Exchange(t_nvlink_s=1e-6, t_rdma_s=0.0, nvlink_bytes=1e9, rdma_bytes=0.0)
    v1 = kernel_time(ex, Kernel("blackwell", "deepep-v1", 8))(v) - v["ep.fixed_us.deepep-v1"] * 1e-6
    hy = kernel_time(ex, Kernel("blackwell", "hybrid-ep", 8))(v) - v["ep.fixed_us.hybrid-ep"] * 1e-6
    assert v1 / hy == pytest.approx(2.0)


def test_an_unused_path_reads_no_parameter():
    t = bind(ep_model.prepare(case()), defaults())  # 8 GPUs inside one NVL72 rack: NVLink only
    assert not any(".rdma" in p for p in t.params)
    assert "ep.sm_rate_GBps.blackwell.nvlink" in t.params


def test_low_latency_pure_rdma_kernels_are_slower_than_nvlink_ones():
    ll = {"mode": "low_latency", "experts": 64, "tokens_per_gpu": 128, "hidden": 7168, "topk": 8, "dtype": "fp8"}
    nvlink = predict(case(system="dgx-h800", params=ll))
    pure_rdma = predict(case(system="dgx-h800", table="v1-2025-02", params=ll))
    assert pure_rdma > 2 * nvlink  # 8 same-node peers through one 50 GB/s NIC instead of NVLink


def test_low_latency_needs_no_expert_count():
    t = ep_model.prepare(case(gpus=64, system="dgx-h800",
                              params={"mode": "low_latency", "experts": None, "tokens_per_gpu": 128}))
    assert t.predict(defaults()) > 0


@pytest.mark.parametrize("params,why", [({"experts": None}, "expert count"), ({"sms": None}, "SM count"),
                                        ({"experts": 60}, "do not divide")])
def test_skips_say_what_the_source_omits(params, why):
    with pytest.raises(Skip, match=why):
        ep_model.prepare(case(params=params))


def test_load_time_is_the_most_loaded_link_not_the_slowest_static_share():
    """Uneven random flows: static max-min rates make the largest flow finish late; a link busy
    until its last byte finishes at its load / capacity."""
    fabric = build_fabric("dgx-h800", 64)
    rng = np.random.default_rng(0)
    src = np.repeat(np.arange(64), 63)
    dst = np.array([d for s in range(64) for d in range(64) if d != s])
    nbytes = rng.poisson(4, size=len(src)) * 7e3 + 1.0
    assert load_time(fabric, src, dst, nbytes) < flows_time(fabric, src, dst, nbytes)
    one = load_time(fabric, [0], [9], [1e9])
    assert one == pytest.approx(flows_time(fabric, [0], [9], [1e9]))


def test_simulate_prices_dispatch_with_the_kernel_profile():
    """The simulator's dispatch reads the same parameters: a slower per-SM copy rate slows it."""
    from moesim.cluster.scenario import load_scenario
    from moesim.sim.simulate import simulate
    base = {"model": "mixtral-8x7b", "gpus": 8, "parallel.ep": 8, "dtypes.weights": "bf16",
            "dtypes.kv_cache": "bf16", "workload": {"kind": "serving", "phase": "prefill", "batch": 4,
                                                    "input_len": 1024, "output_len": 1}}
    fitted = simulate(load_scenario(None, base))["breakdown"]["dispatch"]["comm_s"]
    spec = simulate(load_scenario(None, dict(base, **{"runtime.kernel_profile": "spec"})))["breakdown"]["dispatch"]["comm_s"]
    assert fitted > 0 and spec > 0 and fitted != spec
