"""simulate(): the Result contract, determinism, traces, and the physics the engine must respect."""
import json

import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.cluster.scenario import load_scenario
from moesim.sim.simulate import simulate


@pytest.fixture(scope="module")
def default_result():
    return simulate(load_scenario(), trace=True)


def test_result_contract(default_result):
    r = default_result
    for key in ("tokens_per_s_per_gpu", "tpot_ms", "step_time_s"):
        assert r["metrics"][key] > 0
    for row in r["breakdown"].values():
        assert set(row) == {"compute_s", "comm_s", "exposed_comm_s", "idle_s"}
        assert 0 <= row["exposed_comm_s"] <= row["comm_s"] + 1e-15
    assert r["memory"]["fits"] is True


def test_step_is_at_least_the_critical_gpus_compute_plus_exposed_comm(default_result):
    r = default_result
    compute = sum(v["compute_s"] for v in r["breakdown"].values())
    exposed = sum(v["exposed_comm_s"] for v in r["breakdown"].values())
    assert r["metrics"]["step_time_s"] >= compute + exposed - 1e-12
    assert r["metrics"]["step_time_s"] == pytest.approx(
        compute + exposed + sum(v["idle_s"] for v in r["breakdown"].values()), rel=1e-9)


def test_trace_has_one_track_per_gpu_stream(default_result):
    trace = default_result["_trace"]
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == set(range(16))
    assert {e["tid"] for e in spans} == {0, 1}
    json.dumps(trace)


def test_deterministic():
    a = simulate(load_scenario(None, {"workload.batch": 16}))
    b = simulate(load_scenario(None, {"workload.batch": 16}))
    assert a == b


TRAINING_YAML = """model: mixtral-8x7b
system: dgx-h100
gpus: 32
parallel: {tp: 2, pp: 2, ep: 8}
dtypes: {weights: bf16, kv_cache: bf16}
workload: {kind: training, seq_len: 4096, micro_batch: 1, global_batch: 256, recompute: full}
runtime: {framework: megatron}
"""


def test_same_inputs_give_the_same_bytes_on_the_command_line(tmp_path):
    """No wall clock (or other run description) in the result record: two runs, identical JSON."""
    from click.testing import CliRunner

    from moesim.cli import main
    runs = [CliRunner().invoke(main, ["simulate", "--batch", "16", "--json"]) for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    assert runs[0].output == runs[1].output
    scenario = tmp_path / "training.yaml"
    scenario.write_text(TRAINING_YAML)
    training = [CliRunner().invoke(main, ["simulate", str(scenario), "--json"]) for _ in range(2)]
    assert training[0].exit_code == 0, training[0].output
    assert training[0].output == training[1].output


def test_more_gpus_same_split_never_increase_expert_compute():
    small = simulate(load_scenario(None, {"gpus": 16, "parallel.ep": 16, "workload.batch": 32}))
    large = simulate(load_scenario(None, {"gpus": 32, "parallel.ep": 32, "workload.batch": 32}))
    assert large["breakdown"]["routed_experts"]["compute_s"] <= small["breakdown"]["routed_experts"]["compute_s"]


def test_moe_layers_without_attention_dp_all_reduce_instead_of_dispatching():
    # TP 8 attention with EP 8 experts: every GPU holds every token, so no dispatch or combine runs;
    # the MoE output is summed by an all-reduce like the attention output (two per MoE layer)
    tp = {"model": "qwen3-30b-a3b", "gpus": 8, "parallel.tp": 8, "parallel.dp": 1, "parallel.ep": 8,
          "workload.batch": 16}
    r = simulate(load_scenario(None, tp))
    b = r["breakdown"]
    assert "dispatch" not in b and "combine" not in b
    attention_only = simulate(load_scenario(None, dict(tp, **{"parallel.ep": 1, "parallel.etp": 8})))
    assert b["tp_allreduce"]["comm_s"] == pytest.approx(attention_only["breakdown"]["tp_allreduce"]["comm_s"])
    from moesim.sim.layer_ops import tp_allreduce_time
    sc = load_scenario(None, tp)
    one = tp_allreduce_time(sc, 16 * sc.model.hidden_size * 2, ())
    assert b["tp_allreduce"]["comm_s"] == pytest.approx((sc.model.num_hidden_layers + len(sc.model.moe_layer_indices))
                                                        * one)
    # with attention DP the ranks hold different tokens: the all-to-all moves them
    dp = simulate(load_scenario(None, {"model": "qwen3-30b-a3b", "gpus": 8, "parallel.tp": 1, "parallel.ep": 8,
                                       "workload.batch": 16}))
    assert dp["breakdown"]["dispatch"]["comm_s"] > 0 and dp["breakdown"]["combine"]["comm_s"] > 0


def test_the_gather_exchange_moves_every_token_whatever_the_routing():
    base = {"gpus": 16, "parallel.ep": 16, "workload.batch": 64}
    gather = dict(base, **{"runtime.ep_exchange": "allgather_reducescatter"})
    a2a = simulate(load_scenario(None, base))["breakdown"]
    ag = simulate(load_scenario(None, gather))["breakdown"]
    hot = simulate(load_scenario(None, gather), skew="zipf:1.2")["breakdown"]
    assert ag["dispatch"]["comm_s"] == hot["dispatch"]["comm_s"] > a2a["dispatch"]["comm_s"]   # all tokens, any skew
    assert ag["combine"]["comm_s"] > 0                                                          # same expert work:
    assert ag["routed_experts"]["compute_s"] == pytest.approx(a2a["routed_experts"]["compute_s"], rel=1e-12)


def test_hot_experts_slow_the_step_and_eplb_recovers():
    base = {"gpus": 32, "parallel.ep": 32, "workload.batch": 128}
    uniform = simulate(load_scenario(None, base))["metrics"]["step_time_s"]
    skewed = simulate(load_scenario(None, base), skew="zipf:1.2")["metrics"]["step_time_s"]
    balanced = simulate(load_scenario(None, dict(base, **{"experts.redundant": 32})), skew="zipf:1.2",
                        placement="eplb")["metrics"]["step_time_s"]
    assert skewed > uniform and balanced < skewed


def test_cli_simulate_json_and_trace_file(tmp_path):
    trace = tmp_path / "step.json"
    result = CliRunner().invoke(main, ["simulate", "--batch", "8", "--json", "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert "metrics" in data and "breakdown" in data and "memory" in data
    assert json.loads(trace.read_text())["traceEvents"]


def test_cli_simulate_bad_overlap_and_training():
    runner = CliRunner()
    bad = runner.invoke(main, ["simulate", "--overlap", "three_batch"])
    assert bad.exit_code == 2


TRAIN = {"model": "qwen3-30b-a3b", "gpus": 16, "parallel.ep": 16, "runtime.framework": "megatron",
         "dtypes.weights": "bf16", "dtypes.kv_cache": "bf16",
         "workload": {"kind": "training", "seq_len": 4096, "micro_batch": 1, "global_batch": 64}}


def test_training_step_metrics_are_consistent():
    r = simulate(load_scenario(None, TRAIN))
    m = r["metrics"]
    assert 0 < m["mfu"] < 1
    assert m["tokens_per_s_per_gpu"] == pytest.approx(64 * 4096 / m["step_time_s"] / 16)
    assert r["simulation"]["microbatches"] == 4


def test_pipeline_parallelism_adds_a_bubble():
    flat = simulate(load_scenario(None, TRAIN))["metrics"]
    piped = simulate(load_scenario(None, dict(TRAIN, **{"parallel.pp": 4, "parallel.ep": 4})))["metrics"]
    assert flat["pipeline_bubble_fraction"] == pytest.approx(0, abs=1e-9)
    assert piped["pipeline_bubble_fraction"] > 0.1


def test_training_global_batch_must_divide():
    from moesim.core.errors import MoesimError
    bad = dict(TRAIN, workload=dict(TRAIN["workload"], global_batch=10))
    with pytest.raises(MoesimError) as err:
        simulate(load_scenario(None, bad))
    assert err.value.field == "workload.global_batch"


def test_bench_engine_json_contract():
    result = CliRunner().invoke(main, ["bench", "engine", "--json"])
    assert result.exit_code == 0, result.output
    engine = json.loads(result.output)["engine"]
    for key in ("decode_step_wall_s", "train_step_wall_s", "simulated_s_per_wall_s"):
        assert engine[key] > 0


def test_disaggregated_pools_are_bound_by_the_slower_pool(tmp_path):
    from moesim.sim.simulate import simulate_disaggregated
    decode = load_scenario(None, {"workload.batch": 16})
    prefill = load_scenario(None, {"workload": {"kind": "serving", "phase": "prefill", "batch": 1,
                                                "input_len": 1024, "output_len": 1}})
    r = simulate_disaggregated(prefill, decode)
    m = r["metrics"]
    wd = decode.input.workload
    prefill_rate = r["pools"]["prefill"]["metrics"]["tokens_per_s_per_gpu"] * prefill.gpus / wd.input_len
    decode_rate = r["pools"]["decode"]["metrics"]["tokens_per_s_per_gpu"] * decode.gpus / wd.output_len
    assert m["requests_per_s"] == pytest.approx(min(prefill_rate, decode_rate))
    assert m["bound_by"] == ("prefill" if prefill_rate < decode_rate else "decode")
    from moesim.core.errors import MoesimError
    with pytest.raises(MoesimError):
        simulate_disaggregated(decode, decode)
