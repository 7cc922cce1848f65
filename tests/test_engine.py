"""SimPy engine: critical paths, synchronised collectives, overlap, traces."""
import json

import numpy as np
import pytest

from moesim.sim.engine import Op, chrome_trace, run_step


def moe_layer(attn=1.0, experts=(1.0, 2.0), dispatch=0.5, combine=0.5):
    g = len(experts)
    return [Op("attention", "attention", "compute", (attn,) * g), Op("dispatch", "dispatch", "comm", (dispatch,)),
            Op("experts", "routed_experts", "compute", tuple(experts)), Op("combine", "combine", "comm", (combine,))]


def test_layer_time_is_its_critical_path():
    result = run_step([moe_layer()], 2)
    # attention 1 + dispatch 0.5 + slowest GPU's experts 2 + combine 0.5
    assert result.makespan_s == pytest.approx(4.0)


def test_collectives_wait_for_the_slowest_participant():
    result = run_step([moe_layer(), moe_layer()], 2)
    combine_starts = {(e.gpu, round(e.start_s, 9)) for e in result.events if e.name == "combine"}
    assert combine_starts == {(0, 3.5), (1, 3.5), (0, 7.5), (1, 7.5)}
    waits = [e for e in result.events if e.op_class == "idle_wait" and e.name == "wait for combine"]
    assert {(e.gpu, e.end_s - e.start_s) for e in waits} == {(0, 1.0)}


def test_two_batch_overlap_is_never_slower():
    layers = [moe_layer(attn=1.0, experts=(1.0, 1.2), dispatch=0.8, combine=0.8) for _ in range(4)]
    half = [moe_layer(attn=0.5, experts=(0.5, 0.6), dispatch=0.4, combine=0.4) for _ in range(4)]
    serial = run_step(layers, 2).makespan_s
    overlapped = run_step(half, 2, microbatches=2).makespan_s
    assert overlapped <= serial + 1e-12
    assert overlapped < serial  # comm of one micro-batch hides behind the other's compute


def test_streams_never_run_two_ops_at_once():
    result = run_step([moe_layer() for _ in range(3)], 2, microbatches=2)
    for gpu in (0, 1):
        for stream in ("compute", "comm"):
            spans = sorted((e.start_s, e.end_s) for e in result.events if e.gpu == gpu and e.stream == stream)
            assert all(a_end <= b_start + 1e-12 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_deterministic_and_trace_well_formed(tmp_path):
    a = run_step([moe_layer() for _ in range(2)], 2, microbatches=2)
    b = run_step([moe_layer() for _ in range(2)], 2, microbatches=2)
    assert a.makespan_s == b.makespan_s and a.events == b.events
    trace = chrome_trace(a, name="test")
    text = json.dumps(trace)
    loaded = json.loads(text)
    spans = [e for e in loaded["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(a.events) and all(e["dur"] >= 0 for e in spans)
    assert {e["tid"] for e in spans} == {0, 1}


from moesim.sim.engine import one_f_one_b, run_pipeline


@pytest.mark.parametrize("stages,micro", [(1, 4), (4, 4), (4, 8), (8, 3)])
def test_one_f_one_b_runs_every_microbatch_once_each_way(stages, micro):
    for s in range(stages):
        order = one_f_one_b(s, stages, micro)
        assert sorted(mb for k, mb in order if k == "F") == list(range(micro))
        assert sorted(mb for k, mb in order if k == "B") == list(range(micro))
        # a backward never precedes its own forward on the stage
        seen = set()
        for k, mb in order:
            if k == "F":
                seen.add(mb)
            else:
                assert mb in seen


def test_pipeline_makespan_has_the_1f1b_bubble():
    # equal stages, no transfer cost: (m + p - 1) x (f + b)
    result = run_pipeline([1.0] * 4, [2.0] * 4, 8, 0.0)
    assert result.makespan_s == pytest.approx((8 + 4 - 1) * 3.0)
    assert run_pipeline([1.0], [2.0], 8, 0.0).makespan_s == pytest.approx(24.0)


def test_pipeline_transfers_add_to_the_critical_path():
    assert run_pipeline([1.0] * 4, [2.0] * 4, 8, 0.1).makespan_s > run_pipeline([1.0] * 4, [2.0] * 4, 8, 0.0).makespan_s


def test_splitting_compute_ops_does_not_change_the_schedule():
    coarse = [moe_layer(attn=1.0) for _ in range(3)]
    fine = [[Op("attn a", "attention", "compute", (0.4, 0.4)), Op("attn b", "attention", "compute", (0.6, 0.6))]
            + moe_layer(attn=1.0)[1:] for _ in range(3)]
    for micro in (1, 2):
        assert run_step(fine, 2, microbatches=micro).makespan_s == pytest.approx(
            run_step(coarse, 2, microbatches=micro).makespan_s)


def test_one_microbatch_without_trace_is_the_simpy_float():
    """The SimPy-free path (`record=False`, one micro-batch) gives the very float SimPy gives,
    on random op lists and on a real serving step."""
    rng = np.random.default_rng(7)
    for _ in range(30):
        gpus = int(rng.integers(1, 9))
        layers = []
        for _ in range(int(rng.integers(1, 6))):
            ops = []
            for k in range(int(rng.integers(1, 7))):
                if rng.random() < 0.6:
                    ops.append(Op(f"c{k}", "gemm", "compute", tuple(rng.random(gpus) * 1e-3)))
                else:
                    ops.append(Op(f"a{k}", "a2a", "comm", (float(rng.random() * 1e-3),)))
            layers.append(ops)
        assert run_step(layers, gpus, record=False).makespan_s == run_step(layers, gpus).makespan_s

    from moesim.cluster.scenario import load_scenario
    from moesim.sim.layer_ops import serving_layers
    sc = load_scenario(None, {"model": "qwen3-30b-a3b", "system": "dgx-h100", "gpus": 8, "parallel.ep": 8,
                              "workload": {"kind": "serving", "phase": "decode", "batch": 16, "input_len": 900,
                                           "output_len": 1}})
    layers, group, _ = serving_layers(sc, microbatches=1, skew="uniform", placement=None)
    assert run_step(layers, group, record=False).makespan_s == run_step(layers, group).makespan_s
