"""The training-step kernel model: its stage split reproduces the simulator, and every named
mechanism moves the prediction the way its physics says."""
from __future__ import annotations

import pytest

from moesim.calibration.kernel_fit import bind
from moesim.calibration.kernel_params import definitions
from moesim.cluster.scenario import load_scenario
from moesim.sim import training_mechanisms as mech
from moesim.sim.training_step import training_stage_costs
from moesim.validation import training_model as tm
from moesim.validation.cases import Case, Skip

NAMES = ("training.gemm_efficiency.hopper", "training.gemm_efficiency.blackwell", "training.attention_efficiency",
         "training.launch_us", "training.a2a_exposed")


def case(**over) -> Case:
    params = {"model": "qwen3-30b-a3b", "parallel": {"tp": 1, "pp": 1, "ep": 8}, "seq_len": 4096,
              "global_batch_seqs": 64, "micro_batch": 1, "dtype": "fp8"}
    params.update(over.pop("params", {}))
    data = {"id": "t", "what": "training", "system": "dgx-h100", "gpus": 8, "params": params,
            "metric": "tflops_per_gpu", "measured": 300.0, "source": "test"}
    data.update(over)
    return Case(**data)


def defaults() -> dict[str, float]:
    return {n: d.value for n, d in definitions().items()}


@pytest.fixture(scope="module")
def base():
    return bind(tm.prepare(case()), defaults())


def test_parameters_are_defined_with_sources_and_read(base):
    defs = definitions()
    for name in NAMES:
        assert name in defs and defs[name].source and defs[name].unit
    # a Hopper case reads the Hopper GEMM efficiency, never the Blackwell one
    assert set(base.params) == set(NAMES) - {"training.gemm_efficiency.blackwell"}


@pytest.mark.parametrize("over", [{}, {"params": {"parallel": {"tp": 2, "pp": 2, "ep": 4}}}])
def test_stage_parts_sum_to_the_simulated_stage_times(over):
    sc = load_scenario(None, tm.scenario_overrides(case(**over)))
    costs = training_stage_costs(sc, sc.input.workload)
    stages = mech.stage_parts(sc, costs["dispatch_s"] + costs["combine_s"])
    assert len(stages) == len(costs["forward_s"])
    for s, f, b in zip(stages, costs["forward_s"], costs["backward_s"]):
        assert s.simulated_s == pytest.approx(f, rel=1e-9)
        assert s.simulated_pass_s("none") == pytest.approx(f + b, rel=1e-9)


def test_slower_gemms_lower_the_throughput(base):
    v = defaults()
    fast = base.predict(v)
    v["training.gemm_efficiency.hopper"] = 0.5
    slow = base.predict(v)
    assert slow < fast
    assert fast / slow < 2  # only the GEMM share of the step slows down


def test_host_launch_time_grows_with_local_experts():
    """Fewer EP ranks hold more experts each: more per-expert kernels, so launch time weighs more."""
    v, more = defaults(), defaults()
    more["training.launch_us"] = v["training.launch_us"] * 10
    loss = {}
    for ep in (4, 8):
        t = bind(tm.prepare(case(params={"parallel": {"tp": 1, "pp": 1, "ep": ep}})), v)
        loss[ep] = t.predict(v) / t.predict(more)
    assert loss[4] > loss[8] > 1


def test_attention_efficiency_matters_more_for_longer_sequences():
    v, slow = defaults(), defaults()
    slow["training.attention_efficiency"] = 0.2
    ratio = {}
    for seq in (2048, 8192):
        t = bind(tm.prepare(case(params={"seq_len": seq})), v)
        ratio[seq] = t.predict(v) / t.predict(slow)
    assert ratio[8192] > ratio[2048] > 1


def test_exposed_all_to_all_costs_time_unless_dualpipe_hides_it():
    v, hidden = defaults(), defaults()
    hidden["training.a2a_exposed"] = 0.05
    plain = bind(tm.prepare(case()), v)
    assert plain.predict(hidden) > plain.predict(v)
    dual = bind(tm.prepare(case(params={"pipeline_schedule": "dualpipe"})), v)
    # overlapped: compute dominates this stage, so the exposed share does not change the step
    assert dual.predict(hidden) == pytest.approx(dual.predict(v), rel=1e-9)
    assert dual.predict(v) >= plain.predict(v)


def test_full_recompute_costs_a_forward_pass():
    v = defaults()
    none = bind(tm.prepare(case()), v).predict(v)
    full = bind(tm.prepare(case(params={"recompute": "full"})), v).predict(v)
    assert 1.1 < none / full < 4 / 3 + 1e-9  # at most the 4/3 of compute, comm is not recomputed


def test_metrics_convert_the_same_step():
    v = defaults()
    tf = bind(tm.prepare(case()), v).predict(v)
    tok = bind(tm.prepare(case(metric="tokens_per_s_per_gpu")), v).predict(v)
    step = bind(tm.prepare(case(metric="step_time_s")), v).predict(v)
    assert tok == pytest.approx(64 * 4096 / step / 8, rel=1e-9)
    assert tf > 0


def test_interleaving_cuts_only_the_bubble():
    assert mech.pipeline_slots(10.0, 1.0, 7, 1) == pytest.approx(10.0)
    assert mech.pipeline_slots(10.0, 1.0, 7, 3) == pytest.approx(8.0)
    assert mech.pipeline_slots(7.0, 1.0, 7, 4) == pytest.approx(7.0)


@pytest.mark.parametrize("over, reason", [
    ({"params": {"seq_len": None}}, "missing params: seq_len"),
    ({"params": {"parallel": {"tp": 1, "pp": 1, "ep": 8, "cp": 2}}}, "context parallelism"),
    ({"metric": "watts"}, "unknown metric"),
])
def test_skips_say_why(over, reason):
    c = case(**over)
    if c.params.get("seq_len") is None:
        c = c.model_copy(update={"params": {k: x for k, x in c.params.items() if k != "seq_len"}})
    with pytest.raises(Skip, match=reason):
        tm.prepare(c)


def test_simulate_reports_the_step_the_target_predicts():
    """One model, two users: `moesim simulate` on the case's scenario and the validation target
    evaluated at the same kernel profile give the same step (no vpp, no DualPipe: scenarios
    express neither)."""
    from moesim.calibration.kernel_params import resolve_kernel_profile
    from moesim.sim.simulate import simulate
    c = case(metric="step_time_s")
    sc = load_scenario(None, tm.scenario_overrides(c))
    simulated = simulate(sc, ignore_memory=True)["metrics"]["step_time_s"]
    target = bind(tm.prepare(c), defaults())
    assert target.predict(resolve_kernel_profile(None).values()) == pytest.approx(simulated, rel=1e-9)
