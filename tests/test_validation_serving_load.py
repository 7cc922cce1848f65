"""serving_load validation: a closed-loop benchmark case -> scenario, load and policy -> one serve run
for both metrics; skips with reasons; --cv config; workers; the serving parameters' closure."""
import json
import math
from dataclasses import replace

import pytest
import yaml
from click.testing import CliRunner

from moesim.calibration.kernel_fit import bind, cross_validate, fit_all
from moesim.calibration.kernel_params import SPEC, KernelProfile, definitions, resolve_kernel_profile
from moesim.cli import main
from moesim.cluster.scenario import load_scenario
from moesim.serve.scheduler import Policy, moe_kernel_family, rank_layers, serving_overhead_names
from moesim.validation import serving_load as S
from moesim.validation.cases import Skip, load_cases
from moesim.validation.run import cv_groups, validate
from moesim.validation.serving_load_run import run_benchmark, run_groups

SPEC_PROFILE = KernelProfile(name=SPEC)


def pool(tp, attn_dp, moe_tp, moe_ep, max_batch, **extra):
    return dict(tp=tp, pp=1, attn_dp=attn_dp, moe_tp=moe_tp, moe_ep=moe_ep, gpus=tp * attn_dp,
                max_batch_per_attn_dp=max_batch, **extra)


def bench(run, *, backend="vllm", system="dgx-h100", concurrency=4, isl=128, osl=16, split=(1, 2, 1, 2),
          mode="agg", model="qwen3-30b-a3b", **params):
    """Both cases (TTFT and TPOT) of one small benchmark; measured values are arbitrary test numbers."""
    tp, attn_dp, moe_tp, moe_ep = split
    p = {"model": model, "hf_model": "x", "backend": backend, "backend_version": "1.0", "mode": mode, "isl": isl,
         "osl": osl, "weights_dtype": "fp8", "moe_dtype": "fp8", "concurrency": concurrency}
    if mode == "agg":
        p["pool"] = pool(tp, attn_dp, moe_tp, moe_ep, max(concurrency // attn_dp, 1))
    else:
        p["prefill"] = pool(tp, attn_dp, moe_tp, moe_ep, 1, workers=1)
        p["decode"] = pool(tp, attn_dp, moe_tp, moe_ep, max(concurrency // attn_dp, 1), workers=1)
    p.update(params)
    gpus = tp * attn_dp * (2 if mode == "disagg" else 1)
    return [{"id": f"{run}-{m}", "what": "serving_load", "system": system, "gpus": gpus, "params": p, "metric": m,
             "measured": v, "run": run, "source": "test", "table": "t"}
            for m, v in (("ttft_ms", 40.0), ("tpot_ms", 5.0))]


# Two deployments of qwen3-30b-a3b on H100 (EP2 with attention DP 2; TP2 with expert TP 2), two loads each
GOOD = (bench("a-c2", concurrency=2) + bench("a-c4", concurrency=4)
        + bench("b-c2", concurrency=2, split=(2, 1, 2, 1)) + bench("b-c4", concurrency=4, split=(2, 1, 2, 1)))


def write(tmp_path, cases, name="cases.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"cases": cases}))
    return str(path)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = write(tmp_path_factory.mktemp("sl"), GOOD)
    cases = load_cases(path)
    return path, cases, S.prepare_many(cases, lambda c: None, SPEC_PROFILE, workers=1)


def test_a_case_maps_to_one_instance_with_the_benchmarks_attention_dp_ranks():
    from moesim.cluster.scenario import load_scenario
    from moesim.serve.run import deployment_shape
    case = load_cases_from(bench("m", concurrency=8, split=(2, 2, 1, 4), isl=256, osl=32))[0]
    b = S.benchmark_of(case, None)
    sc = load_scenario(None, S.scenario_overrides(b))
    p = sc.plan
    assert (p.tp, p.dp, p.ep, p.etp, sc.gpus) == (2, 2, 4, 1, 4)
    assert deployment_shape(sc) == (1, 2)              # one instance of attn_dp = 2 ranks of tp = 2 GPUs
    assert sc.input.runtime.framework == "vllm" and sc.input.dtypes.weights == "fp8"
    assert sc.input.dtypes.kv_cache == "fp8" == S.kv_cache_format("fp8") and S.kv_cache_format("bf16") == "bf16"
    assert S.batch_limit(b) == 4                        # max_batch_per_attn_dp -> Policy.max_running
    assert S.disagg_for(b) is None
    load = S.load_for(b)
    assert (load.concurrency, load.warmup, load.closed_loop_start) == (8, 0, "burst")   # every request measured
    assert load.requests == S.SIMULATED_ROUNDS * 8


def test_the_client_mean_weights_the_steady_round_for_the_rounds_not_simulated():
    burst, second, steady, drain = [10.0, 30.0], [4.0, 6.0], [2.0, 2.0], [1.0, 3.0]

    def mean(values, rounds):
        return S.weighted_mean(S.round_means(values, 2), rounds)
    assert S.round_means(burst + second + steady + drain, 2) == [20.0, 5.0, 2.0, 2.0]
    drain = [1.0, 1.0]   # the last round drains: it weighs 1, the steady round before it the rest
    assert mean(burst + second + steady + drain, 20) == pytest.approx((20 + 5 + 2 * 17 + 1) / 20)
    assert mean(burst + second + steady + drain, 5) == pytest.approx((20 + 5 + 2 * 2 + 1) / 5)
    assert mean(burst + steady + drain, 20) == pytest.approx((20 + 2 * 18 + 1) / 20)
    assert mean(burst + second + steady + drain, 3) == pytest.approx((20 + 5 + 1) / 3)   # no round left to stand for
    assert mean(burst + steady, 20) == pytest.approx((20 + 2 * 19) / 20)                # 2 rounds: the last is steady
    assert mean([7.0, 9.0], 20) == 8.0                                                   # one round: its own mean
    assert [S.steady_round(n) for n in (1, 2, 3, 4)] == [0, 1, 1, 2]
    assert S.simulated_rounds(8, 1024) == 4 and S.simulated_rounds(4096, 1024) == 3   # 2 x 4096 x 1024 > 1M tokens


def test_the_measured_rounds_are_one_fitted_parameter_with_the_generators_default():
    d = definitions()[S.ROUNDS]
    assert d.value == 20.0 and d.bounds == (2.0, 50.0)


def test_sglang_aggregated_benchmarks_mix_decode_into_prefill_steps():
    sglang = S.benchmark_of(load_cases_from(bench("g", backend="sglang"))[0], None)
    split = S.benchmark_of(load_cases_from(bench("h", backend="sglang", mode="disagg"))[0], None)
    vllm = S.benchmark_of(load_cases_from(bench("v"))[0], None)
    assert S.step_policy(sglang, "prefill_first") == "mixed"                  # --enable-mixed-chunk
    assert S.step_policy(split, "prefill_first") == "prefill_first"           # only the aggregated workers
    assert S.step_policy(vllm, "mixed") == "mixed"


def test_engines_run_the_benchmark_launchs_step_budget_and_a_graph_for_every_batch():
    def of(**kw):
        return S.benchmark_of(load_cases_from(bench("l", concurrency=8, **dict({"isl": 1000}, **kw)))[0], None)
    # max_batch_size + isl + 1500 (the pool's max_batch_per_attn_dp: 8 clients over 2 attention-DP ranks)
    assert S.step_token_budget(of(), 8192) == 4 + 1000 + 1500
    assert S.step_token_budget(of(backend="trtllm"), 8192) == 2528            # 2504 up to a 32-token block
    assert S.step_token_budget(of(backend="sglang"), 8192) == 4 + 2500        # isl + 1500 below the chunk
    assert S.step_token_budget(of(backend="sglang", isl=9000), 8192) == 4 + 8192   # the chunk below isl + 1500
    assert S.step_token_budget(of(mode="disagg"), 8192) == 8192               # pools keep the framework's
    assert S.graph_sizes(of()) == (1, 2, 3, 4)
    run = run_benchmark(of(), SPEC_PROFILE.values())
    assert run["tpot_ms"] > 0


def test_attention_dp_benchmarks_gather_tokens_unless_trtllm_has_mnnvl():
    def exchange(**kw):
        b = S.benchmark_of(load_cases_from(bench("x", **kw))[0], None)
        return S.scenario_overrides(b)["runtime.ep_exchange"]
    assert exchange() == "allgather_reducescatter"                            # vLLM's default backend
    assert exchange(backend="sglang") == exchange(backend="trtllm") == "allgather_reducescatter"
    assert exchange(backend="trtllm", system="gb200-nvl72", model="deepseek-v3", weights_dtype="nvfp4",
                    moe_dtype="nvfp4") == "all_to_all"                        # MNNVL all-to-all in one NVL72 rack
    assert exchange(backend="vllm", system="gb200-nvl72", model="deepseek-v3") == "allgather_reducescatter"


def load_cases_from(cases, tmp=None):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        return load_cases(write(Path(d), cases))


def test_disagg_pools_of_their_own_splits():
    case = load_cases_from(bench("d", mode="disagg", concurrency=4, decode=pool(2, 1, 2, 1, 4, workers=3)))[0]
    b = S.benchmark_of(case, None)
    d = S.disagg_for(b)
    assert (d.prefill, d.decode, dict(d.decode_parallel)) == (1, 3, {"tp": 2, "ep": 1, "etp": 2})
    assert d.prefill_max_running == 1                    # the prefill pool's own max_batch_per_attn_dp
    assert S.batch_limit(b) == 4 and S.scenario_overrides(b)["parallel.ep"] == 2   # the prefill pool's split
    same = S.benchmark_of(load_cases_from(bench("e", mode="disagg"))[0], None)
    assert S.disagg_for(same).decode_parallel is None
    run = run_benchmark(b, SPEC_PROFILE.values())
    assert run["ttft_ms"] > 0 and run["tpot_ms"] > 0 and run["steps_per_output_token"] == 1.0
    assert run["steps_before_first_token"] >= 1


def test_fp4_on_a_gpu_without_fp4_tensor_cores_runs_weight_only():
    case = load_cases_from(bench("h", weights_dtype="nvfp4", moe_dtype="nvfp4"))[0]
    assert S.scenario_overrides(S.benchmark_of(case, None))["dtypes.weights"] == S.WEIGHT_ONLY_FP4
    case = load_cases_from(bench("b", system="hgx-b200", weights_dtype="nvfp4", moe_dtype="nvfp4"))[0]
    assert S.scenario_overrides(S.benchmark_of(case, None))["dtypes.weights"] == "nvfp4"


@pytest.mark.parametrize("cases, reason", [
    (bench("x", split=(1, 1, 2, 1)), "does not cover the pool"),
    (bench("x", backend="tgi"), "unknown backend"),
    (bench("x", mode="both"), "unknown mode"),
    (bench("x", pool=dict(pool(1, 2, 1, 2, 2), pp=2)), "pipeline parallelism"),
    (bench("x", concurrency=8, pool=pool(1, 2, 1, 2, 2)), "batch limit of 4 requests .* below the 8 clients"),
    ([dict(c, params=dict(c["params"], concurrency="many")) for c in bench("x")], "concurrency must be a whole"),
])
def test_skips_say_why_without_simulating(cases, reason):
    for case in load_cases_from(cases):
        with pytest.raises(Skip, match=reason):
            S.benchmark_of(case, None)


def test_a_deployment_whose_kv_does_not_fit_is_skipped_with_the_ledger_reason():
    # Qwen3-235B in FP8 on one H100: the weights alone exceed the GPU
    case = load_cases_from(bench("k", model="qwen3-235b-a22b", split=(1, 1, 1, 1)))[0]
    run = run_benchmark(S.benchmark_of(case, None), SPEC_PROFILE.values())
    assert run["skip"].startswith("KV cache does not fit per the VRAM ledger")


def test_a_record_faster_than_its_kv_allows_is_inconsistent():
    # Little's law: with KV for 1 / k of the clients, TTFT >= (k - 1) x (OSL - 1) x TPOT = 2 x 15 x 5 ms = 150 ms
    b = S.benchmark_of(load_cases_from(bench("q", osl=16, backend="trtllm"))[0], None)
    why = S.record_contradiction(b, 3.0, {"ttft_ms": 149.0, "tpot_ms": 5.0})
    assert why.startswith("inconsistent record") and "decode of 75 ms = 150 ms, yet it measured 149 ms" in why
    assert S.record_contradiction(b, 3.0, {"ttft_ms": 151.0, "tpot_ms": 5.0}) is None
    assert S.record_contradiction(b, 0.9, {"ttft_ms": 1.0, "tpot_ms": 5.0}) is None   # every client's KV fits
    assert S.record_contradiction(b, 3.0, {"ttft_ms": 1.0}) is None                     # one metric says nothing
    # vLLM and SGLang launches keep their prefix caches on: clients may share KV, so no bound
    vllm = S.benchmark_of(load_cases_from(bench("q", osl=16))[0], None)
    assert S.record_contradiction(vllm, 3.0, {"ttft_ms": 149.0, "tpot_ms": 5.0}) is None


def test_kv_demand_is_per_rank_and_per_client():
    from moesim.validation.serving_load_run import kv_demand

    def demand(**kw):
        b = S.benchmark_of(load_cases_from(bench("d", **kw))[0], None)
        return kv_demand(b, load_scenario(None, S.scenario_overrides(b)))
    base = demand(concurrency=4)
    assert 0 < base < 1
    assert demand(concurrency=8) == pytest.approx(2 * base)
    assert demand(concurrency=8, isl=256) == pytest.approx(2 * base * (256 + 8) / (128 + 8))
    # attention DP 2 (EP 2) against one TP-2 rank: half the clients per rank, each GPU holding whole tokens rather
    # than half of each token's KV heads - the same KV per GPU (the weights the two leave differ by a little)
    assert demand(concurrency=4, split=(2, 1, 2, 1)) == pytest.approx(base, rel=0.05)
    # disaggregated: the decode pool's GPUs hold the clients' KV (here one decode instance of the same split)
    assert demand(concurrency=4, mode="disagg") == pytest.approx(base)
    assert demand(concurrency=4, mode="disagg", decode=pool(1, 2, 1, 2, 2, workers=2)) == pytest.approx(base / 2)


def test_inconsistent_records_are_skipped_for_both_metrics(monkeypatch):
    import moesim.validation.serving_load_run as R
    cases = load_cases_from(bench("z", concurrency=2, backend="trtllm"))
    monkeypatch.setattr(R, "kv_demand", lambda b, sc: 50.0)   # 49 x a decode of 75 ms: 3.7 s > the 40 ms measured
    out = S.prepare_many(cases, lambda c: None, SPEC_PROFILE, workers=1)
    assert [str(out[c.id]).split(":")[0] for c in cases] == ["inconsistent record"] * 2


def test_unknown_metric_is_a_skip():
    case = load_cases_from([dict(bench("u")[0], metric="itl_ms")])[0]
    with pytest.raises(Skip, match="unknown metric"):
        S.benchmark_of(case, None)


def test_both_metrics_come_from_one_run_per_benchmark(good, monkeypatch):
    import moesim.serve.run as serve_run
    _, cases, _ = good
    calls = []
    real = serve_run.serve

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(serve_run, "serve", counting)
    out = S.prepare_many(cases, lambda c: None, SPEC_PROFILE, workers=1)
    assert len(calls) == len(cases) // 2 == 4
    assert all(not isinstance(t, Skip) for t in out.values())


def test_the_closure_is_first_order_in_the_serving_parameters(good):
    _, cases, targets = good
    v = SPEC_PROFILE.values()
    t_ttft, t_tpot = targets["a-c4-ttft_ms"], targets["a-c4-tpot_ms"]
    c, r, h, per_layer, scale, mixed = serving_overhead_names("vllm", "fp8")   # qwen3-30b-a3b in FP8
    base_ttft, base_tpot = t_ttft.predict(v), t_tpot.predict(v)
    case = next(x for x in cases if x.id == "a-c4-tpot_ms")
    layers = load_scenario(None, S.scenario_overrides(S.benchmark_of(case, None))).model.num_hidden_layers
    moved = t_tpot.predict(dict(v, **{per_layer: v[per_layer] + 10.0}))   # 10 us more per layer and step
    assert moved - base_tpot == pytest.approx(10.0 * layers / 1e3, rel=1e-6)
    assert t_ttft.predict(dict(v, **{h: v[h] + 7.0})) == base_ttft       # an aggregated run has no hand-over
    assert t_ttft.predict(dict(v, **{r: v[r] + 7.0})) == pytest.approx(base_ttft + 7.0)
    # the first token seen 7 ms later, the last one not: (last - first) / (OSL - 1) that much shorter
    assert t_tpot.predict(dict(v, **{r: v[r] + 7.0})) == pytest.approx(base_tpot - 7.0 / (case.params["osl"] - 1))
    bumped = t_tpot.predict(dict(v, **{c: v[c] + 1.0}))
    assert bumped - base_tpot == pytest.approx(1.0, rel=1e-6)            # vLLM: one step per output token
    assert t_ttft.predict(dict(v, **{c: v[c] + 1.0})) > base_ttft
    run = run_benchmark(S.benchmark_of(case, None), v)
    prompt_ms = S.weighted_mean(run["rounds"]["prefill_ms_before_first_token"], v[S.ROUNDS])
    mixed_ms = S.weighted_mean(run["rounds"]["mixed_prefill_ms_before_first_token"], v[S.ROUNDS])
    assert prompt_ms > 0.0   # the burst's first step runs its own prompt with nothing decoding
    assert t_ttft.predict(dict(v, **{scale: v[scale] + 0.5})) == pytest.approx(base_ttft + 0.5 * prompt_ms)
    assert t_ttft.predict(dict(v, **{mixed: v[mixed] + 0.5})) == pytest.approx(base_ttft + 0.5 * mixed_ms)


def test_4bit_experts_pay_their_own_per_layer_time():
    """The per-layer time is the backend's for the MoE kernels a model's experts run: a 4-bit float checkpoint on
    H100 (no FP4 tensor cores) runs weight-only and reads the `.w4a16` parameter, the same on B200 its format's
    (`.nvfp4`), an FP8 one the `.fp8` one."""
    def scenario(**params):
        case = load_cases_from(bench("k", **params))[0]
        return load_scenario(None, S.scenario_overrides(S.benchmark_of(case, None)))
    fp8, w4, nv = scenario(), scenario(moe_dtype="nvfp4"), scenario(moe_dtype="nvfp4", system="hgx-b200")
    assert [moe_kernel_family(sc) for sc in (fp8, w4, nv)] == ["fp8", "w4a16", "nvfp4"]
    assert serving_overhead_names("vllm", "nvfp4")[3] == "serving.layer_overhead_us.vllm.nvfp4"
    values = resolve_kernel_profile(None).values()   # the shipped fit, which Policy reads
    for sc, family in ((fp8, "fp8"), (w4, "w4a16"), (nv, "nvfp4")):
        expected = values[f"serving.layer_overhead_us.vllm.{family}"] * rank_layers(sc) / 1e6
        assert Policy.of(sc).layer_overhead_s == pytest.approx(expected)


def test_gpt_oss_release_checkpoint_runs_its_own_formats():
    """The records file gpt-oss-120b's release checkpoint as nvfp4: it holds MXFP4 experts and BF16 elsewhere
    (the model file's release_formats), and runs so; another checkpoint of it keeps the record's formats."""
    assert S.checkpoint_formats("gpt-oss-120b", "openai/gpt-oss-120b", "nvfp4", "nvfp4") == ("bf16", "mxfp4")
    assert S.checkpoint_formats("gpt-oss-120b", "someone/gpt-oss-120b-nvfp4", "nvfp4", "nvfp4") == ("nvfp4", "nvfp4")
    assert S.checkpoint_formats("gpt-oss-120b", "openai/gpt-oss-120b", "bf16", "bf16") == ("bf16", "bf16")
    assert S.checkpoint_formats("deepseek-v3", "x", "nvfp4", "nvfp4") == ("nvfp4", "nvfp4")
    # Kimi-K2.5's release (INT4 experts at group 32, BF16 elsewhere) is filed int4_wo; its nvfp4 records name
    # another checkpoint (an NVFP4 quantisation of it) and keep their formats
    assert S.checkpoint_formats("kimi-k2.5", "moonshotai/Kimi-K2.5", "int4_wo", "int4_wo") == ("bf16", "int4_wo_g32")
    assert S.checkpoint_formats("kimi-k2.5", "moonshotai/Kimi-K2.5", "nvfp4", "nvfp4") == ("nvfp4", "nvfp4")
    case = load_cases_from(bench("g", model="gpt-oss-120b", hf_model="openai/gpt-oss-120b", system="hgx-b200",
                                 weights_dtype="nvfp4", moe_dtype="nvfp4", split=(1, 1, 1, 1)))[0]
    sc = load_scenario(None, S.scenario_overrides(S.benchmark_of(case, None)))
    assert (sc.input.dtypes.weights, sc.input.dtypes.expert_weights, moe_kernel_family(sc)) == \
        ("bf16", "mxfp4", "mxfp4")


def test_a_slower_prefill_lengthens_the_steps_that_hold_prompt_tokens():
    """The prefill scales multiply the step model's time of a step's prompt tokens, in prompt-only steps and in
    steps that also decode: TTFT grows by at least the request's own prompt, TPOT by the prompts that share its
    decode steps (in vLLM's mixed steps: prompt-only steps interrupt no decode), a run of pure decode not at all."""
    cases = load_cases_from(bench("pre", concurrency=8, isl=2048, osl=64))
    b = S.benchmark_of(cases[0], None)
    v = SPEC_PROFILE.values()
    scale, mixed = serving_overhead_names("vllm", "fp8")[4:]
    base, slow, slow_mixed = (run_benchmark(b, dict(v, **changed)) for changed in ({}, {scale: 2.0}, {mixed: 2.0}))
    assert slow["prefill_scale"] == 2.0 and base["prefill_scale"] == 1.0 and slow_mixed["mixed_prefill_scale"] == 2.0
    own, own_mixed = (S.weighted_mean(base["rounds"][key], v[S.ROUNDS])
                      for key in ("prefill_ms_before_first_token", "mixed_prefill_ms_before_first_token"))
    assert slow["ttft_ms"] > base["ttft_ms"] + 0.5 * own
    assert slow["tpot_ms"] == base["tpot_ms"]
    assert slow_mixed["ttft_ms"] > base["ttft_ms"] + 0.5 * own_mixed
    assert slow_mixed["tpot_ms"] > base["tpot_ms"]


def test_the_closure_is_exact_in_the_measured_rounds(good):
    """The rounds only weight the simulated rounds' means: the closure at other rounds is a run at them."""
    _, cases, targets = good
    v = SPEC_PROFILE.values()
    rounds = S.ROUNDS
    case = next(x for x in cases if x.id == "a-c4-ttft_ms")
    few = dict(v, **{rounds: 5.0})
    rerun = run_benchmark(S.benchmark_of(case, None), few)
    assert rerun["profiled_rounds"] == 5.0
    assert targets["a-c4-ttft_ms"].predict(few) == pytest.approx(rerun["ttft_ms"], rel=1e-12)
    assert targets["a-c4-tpot_ms"].predict(few) == pytest.approx(rerun["tpot_ms"], rel=1e-12)


def test_fewer_measured_rounds_weigh_the_burst_more():
    cases = load_cases_from(bench("burst", concurrency=16, isl=2048, osl=16))
    targets = S.prepare_many(cases, lambda c: None, SPEC_PROFILE, workers=1)
    v = SPEC_PROFILE.values()
    run = run_benchmark(S.benchmark_of(cases[0], None), v)
    burst, second, steady, drain = run["rounds"]["ttft_ms"]
    assert burst > 1.2 * steady                    # the burst round queues every client's 2k-token prompt
    ttft = targets["burst-ttft_ms"]
    for rounds in (5.0, 20.0, 50.0):
        assert ttft.predict(dict(v, **{S.ROUNDS: rounds})) == pytest.approx(
            (burst + second + (rounds - 3) * steady + drain) / rounds, rel=1e-12)


def test_closure_against_a_resimulation(good):
    """The first-order model from a run at the defaults, evaluated at other values, against a run at them."""
    _, cases, targets = good
    v = SPEC_PROFILE.values()
    c, r, _, _, scale, mixed = serving_overhead_names("vllm", "fp8")
    moved = dict(v, **{c: 2.0, r: 30.0, scale: 1.5, mixed: 1.5})
    case = next(x for x in cases if x.id == "a-c4-ttft_ms")
    rerun = run_benchmark(S.benchmark_of(case, None), moved)
    assert targets["a-c4-ttft_ms"].predict(moved) == pytest.approx(rerun["ttft_ms"], rel=0.05)
    assert targets["a-c4-tpot_ms"].predict(moved) == pytest.approx(rerun["tpot_ms"], rel=0.05)


def test_a_run_simulates_at_its_values_even_after_a_run_at_others_in_the_same_process():
    # step times and routed-expert parts are kept per process; their keys hold the kernel values in
    # force, so slower collectives (the attention-DP ranks' all-gather and reduce-scatter in every
    # MoE layer) must show in the second run
    case = load_cases_from(bench("hbm", concurrency=8, isl=256, osl=32))[1]
    b = S.benchmark_of(case, None)
    v = SPEC_PROFILE.values()
    first = run_benchmark(b, v)
    slower = run_benchmark(b, dict(v, **{"collective.latency_scale": v["collective.latency_scale"] * 20}))
    again = run_benchmark(b, v)
    assert slower["tpot_ms"] > first["tpot_ms"] * 1.2
    assert again["tpot_ms"] == first["tpot_ms"]


def test_workers_give_the_same_floats(good):
    _, cases, targets = good
    benches = {}
    for case in cases:
        b = S.benchmark_of(case, None)
        benches.setdefault(b.key, b)
    groups = {}
    for b in benches.values():
        groups.setdefault(b.deployment, []).append(b)
    one = run_groups(list(groups.values()), SPEC_PROFILE, workers=1)
    two = run_groups(list(groups.values()), SPEC_PROFILE, workers=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_cv_config_leaves_a_whole_configuration_out(good):
    _, cases, targets = good
    defs = definitions()
    defaults, bounds = {n: d.value for n, d in defs.items()}, {n: d.bounds for n, d in defs.items()}
    ts = [bind(targets[c.id], defaults) for c in cases]
    assert len({S.config_key(c) for c in cases}) == 2 and all(t.params for t in ts)

    def held_out(ts):
        fitted = fit_all(ts, defaults, bounds)
        return cross_validate(cv_groups(ts, cases), dict(defaults, **fitted.values), defaults, bounds)

    before = held_out(ts)
    # change every measured value of configuration "a": its left-out predictions must not move
    changed = [replace(t, measured=t.measured * 3.0) if t.id.startswith("a-") else t for t in ts]
    after = held_out(changed)
    for t in ts:
        if t.id.startswith("a-"):
            assert after[t.id] == pytest.approx(before[t.id], rel=1e-9, abs=1e-12)
    assert any(after[t.id] != pytest.approx(before[t.id]) for t in ts if t.id.startswith("b-"))


def test_cv_model_and_system_leave_every_deployment_of_one_label_out(tmp_path):
    # two models on one system, one of them also on a second system: --cv model must predict all of a
    # model's deployments without any of them in the fit, --cv system all of a system's
    cases = load_cases(write(tmp_path, bench("m-a", concurrency=2) + bench("m-b", concurrency=4, split=(2, 1, 2, 1))
                             + bench("g-a", concurrency=2, model="gpt-oss-20b")
                             + bench("h-a", concurrency=2, system="hgx-h200")))
    targets = S.prepare_many(cases, lambda c: None, SPEC_PROFILE, workers=1)
    defs = definitions()
    defaults, bounds = {n: d.value for n, d in defs.items()}, {n: d.bounds for n, d in defs.items()}
    ts = [bind(targets[c.id], defaults) for c in cases]
    by_model = {t.id: t.group for t in cv_groups(ts, cases, "model")}
    by_system = {t.id: t.group for t in cv_groups(ts, cases, "system")}
    assert by_model["m-a-ttft_ms"] == by_model["m-b-tpot_ms"] == by_model["h-a-ttft_ms"] == "model: qwen3-30b-a3b"
    assert by_model["g-a-ttft_ms"] == "model: gpt-oss-20b"
    assert by_system["h-a-tpot_ms"] == "system: hgx-h200" != by_system["g-a-tpot_ms"] == "system: dgx-h100"

    def held_out(ts, mode):
        fitted = fit_all(ts, defaults, bounds)
        return cross_validate(cv_groups(ts, cases, mode), dict(defaults, **fitted.values), defaults, bounds)

    for mode, left in (("model", lambda i: not i.startswith("g-")), ("system", lambda i: i.startswith("h-"))):
        before = held_out(ts, mode)
        # triple every measurement of the left-out label: its left-out predictions must not move
        after = held_out([replace(t, measured=t.measured * 3.0) if left(t.id) else t for t in ts], mode)
        for t in ts:
            if left(t.id):
                assert after[t.id] == pytest.approx(before[t.id], rel=1e-9, abs=1e-12), (mode, t.id)
        assert any(after[t.id] != pytest.approx(before[t.id]) for t in ts if not left(t.id)), mode


def test_cli_cv_model_names_what_it_left_out(good):
    path, _, _ = good
    out = CliRunner().invoke(main, ["validate", "--cases", path, "--profile", "spec", "--cv", "model"])
    assert out.exit_code == 0, out.output
    assert "fitted without that model" in out.output and "MAPE left-out" in out.output
    bad = CliRunner().invoke(main, ["validate", "--cases", path, "--cv", "gpu"])
    assert bad.exit_code == 2 and "--cv" in bad.output
    from moesim.core.errors import MoesimError
    with pytest.raises(MoesimError, match="source, config, model, system"):
        validate(load_cases(path), kernel_profile=SPEC, cv="gpu")


def test_validate_reports_per_metric_and_per_group(good, tmp_path):
    path, cases, _ = good
    result = validate(cases, kernel_profile=SPEC)
    assert {"serving_load.ttft_ms", "serving_load.tpot_ms"} <= set(result["mape"]) <= set(result["bias"])
    groups = result["groups"]["serving_load.ttft_ms"]
    assert groups["overall"]["cases"] == 4
    assert set(groups) == {"overall", "system", "backend", "backend_version", "mode", "model"}
    assert groups["system"]["dgx-h100"]["cases"] == 4 and "mape" in groups["backend"]["vllm"]
    row = result["cases"][0]
    assert row["labels"]["system"] == "dgx-h100" and row["labels"]["backend_version"] == "vllm 1.0"
    runner = CliRunner()
    png = tmp_path / "parity.png"
    out = runner.invoke(main, ["validate", "--cases", path, "--profile", "spec", "--report", str(png)])
    assert out.exit_code == 0, out.output
    assert "serving_load.ttft_ms" in out.output and "backend_version" in out.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cases_file_errors_still_name_the_line(tmp_path):
    from moesim.core.errors import MoesimError
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - id: x\n    what: serving_load\n    system: dgx-h100\n    metric: ttft_ms\n"
                   "    measured: -1\n    source: t\n")
    with pytest.raises(MoesimError, match=r"bad.yaml:6"):
        load_cases(str(bad))


def test_cli_cv_config_with_workers(good):
    path, _, _ = good
    out = CliRunner().invoke(main, ["validate", "--cases", path, "--profile", "spec", "--cv", "config", "--workers", "2",
                                    "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["cv"] == "config"
    for key in ("serving_load", "serving_load.ttft_ms", "serving_load.tpot_ms"):
        assert key in data["mape_cv"] and key in data["bias_cv"] and key in data["mape"]
    assert "mape_cv" in data["groups"]["serving_load.tpot_ms"]["backend"]["vllm"]
    bad = CliRunner().invoke(main, ["validate", "--cases", path, "--workers", "0"])
    assert bad.exit_code == 2 and "--workers" in bad.output


def test_report_has_the_serving_parity_and_group_table(good, tmp_path):
    from moesim.present import report
    _, cases, _ = good
    data = tmp_path / "validate.json"
    data.write_text(json.dumps(validate(cases, kernel_profile=SPEC, cv="config")))
    html = report.build_report([str(data)], str(tmp_path / "r.html")).read_text()
    assert "Serving benchmarks: TTFT and TPOT" in html and "left out" in html
    assert "backend_version" in html and "vllm 1.0" in html



def test_a_release_format_moesim_does_not_know_is_one_clear_error(tmp_path):
    from moesim.core.errors import MoesimError
    from moesim.specs.model import load_model
    text = open("workloads/models/gpt-oss-120b.yaml").read().replace("experts: mxfp4", "experts: mxfp5")
    path = tmp_path / "gpt-oss-bad.yaml"
    path.write_text(text)
    with pytest.raises(MoesimError) as exc:
        load_model(str(path))
    assert "release_formats" in exc.value.one_line() and "mxfp5" in exc.value.one_line()


def test_a_one_token_output_has_no_tpot_to_move():
    # TPOT's closure divides the request overhead by OSL - 1: a one-token output gives NaN, not an error
    cases = load_cases_from(bench("one", concurrency=2, isl=128, osl=1))
    targets = S.prepare_many(cases, lambda c: None, SPEC_PROFILE, workers=1)
    v = SPEC_PROFILE.values()
    assert math.isnan(targets["one-tpot_ms"].predict(v))
    assert targets["one-ttft_ms"].predict(v) > 0
