"""Closed-loop serving benchmarks (`what: serving_load`, validation/serving_load.yaml) as fit targets.

A case is one metric (`ttft_ms` or `tpot_ms`, the means the benchmark client reports) of one
benchmark: `concurrency` clients, each with one request of `isl` + `osl` tokens in flight, on a
deployment (model, system, backend and version, agg or disagg pools, weight formats). The two
cases of a benchmark share `run` and come from ONE request-level run of `moesim.serve.run.serve`.

Mapping a pool to a scenario (one engine instance per pool, `serve.run.deployment_shape`):

    parallel.tp = tp, parallel.dp = attn_dp, parallel.ep = moe_ep, parallel.etp = moe_tp, gpus = pool gpus

`deployment_shape` makes an instance of the EP group's ep x etp GPUs with (ep x etp) / tp
attention-DP ranks, and the scenario's dp / ranks instances. The benchmark's MoE layers span the
whole pool (moe_tp x moe_ep = tp x attn_dp = gpus, pp 1), so the scenario has exactly one
instance of `attn_dp` ranks of `tp` GPUs each: the benchmark's attention-DP ranks. A record
whose MoE split does not cover its pool is skipped as inconsistent. `max_batch_per_attn_dp` is
the scheduler's per-rank limit (`Policy.max_running`): AIConfigurator sets it to the clients per
rank (3,348 of the 3,370 agg records); the 22 whose limit is below the clients (it is the clients
per GPU there) are skipped as inconsistent rather than left to queue clients for whole requests;
backend -> `runtime.framework` (its batching defaults, workloads/frameworks.yaml, but SGLang's
aggregated steps mixed, `AGG_STEP_POLICY`, and the step token budget, CUDA graphs and attention-DP
EP exchange AIConfigurator's benchmark launch gives them: `step_token_budget`, `graph_sizes`,
`ep_exchange`); weights_dtype / moe_dtype -> `dtypes.weights` / `dtypes.expert_weights` (an FP4
checkpoint on a GPU without FP4 tensor cores runs weight-only, `WEIGHT_ONLY_FP4`). The KV-cache
format is not stated: FP8 for FP8/FP4-quantised checkpoints, BF16 for the others (`kv_cache_format`, which says why). Disaggregated benchmarks run `serve.disagg`
with `prefill.workers` instances of the prefill pool's split (the scenario) and `decode.workers`
instances of the decode pool's (`make_disagg(decode_parallel=)` when it differs); each pool has
its own per-rank limit (the prefill pools of this file all say 1: AIConfigurator launches prefill
engines with max batch 1 and a token budget of ISL + 1500, github ai-dynamo/aiconfigurator
src/aiconfigurator/generator/rule_plugin/*.rule `prefill max_batch_size`, so a prefill rank runs
one prompt at a time).

The load, as the benchmark client ran it (`load_for`; aiperf as AIConfigurator's benchmark generator
drives it): warm-up requests run and drain first, so the profiling phase starts on an idle engine
with every client sending at once (aiperf's concurrency burst, `closed_loop_start="burst"`); each
client then sends its next request when its last one finishes, until `concurrency` x R requests
were sent, and every one of them is in the means. The first round therefore queues the whole burst
of prompts, and its TTFT is part of the mean with a weight of 1 / R. The file does not state R: it
is fitted (`ROUNDS`, topologies/kernels/benchmark.yaml; prior 20, the generator's default), one for
the whole file, so the three backends' serving parameters are fitted together. moesim simulates
`SIMULATED_ROUNDS` rounds (request k is in round k // concurrency): the burst, the round it shapes,
one steady round that stands for the remaining R - 3 (`weighted_mean`), and the last round, which
drains: no client sends after it, so its requests decode beside fewer new prompts and queue behind
fewer, as the client's own last round does. The steady round is therefore not the last one: a
round followed by none saw half the other clients' prompts that a steady round sees (SGLang,
DeepSeek-R1 FP8 on 8 x B200, 8k + 1k tokens, 128 clients: prefill time per output token 7.7 ms in
the last round, 14.6 ms in the one before it, TPOT 35.0 vs 41.1 ms). One round fewer (burst, steady,
drain) where the two after the burst would generate more than `MEASURED_TOKENS` tokens. R only
weights the simulated rounds' means, so one run serves every R.
Why so few: with fixed lengths and a deterministic simulator the rounds after the second repeat one
another closely, while a run's cost grows with its steps. Measured on 30 benchmarks drawn from the
file (seeded shuffle, concurrency x OSL <= 256k), against 6 simulated rounds: 3 differ by 1.2 % in
mean TTFT (at most 24 %) and 0.4 % in TPOT (at most 2.8 %) - with the third, draining round then
standing for the steady ones.

The fit (`topologies/kernels/serving.yaml` and the rounds R; robust,
`calibration.kernel_fit.ROBUST_LOG_SCALE`): per backend, the per-step CPU time c on the critical
path (`Policy.cpu_overhead_s`) and the per-request overhead r (HTTP, tokenisation, first-token
detokenisation; `Policy.request_overhead_s`, on the first token's way back to the client: a request joins its
rank's queue as it is sent, below),
and in disaggregated runs the hand-over h from prefill to decode worker beyond the KV flow
(`Policy.kv_handoff_s`, a request joins its decode rank's queue h after its KV arrived), and the GPU
time l per decoder layer and step beyond the step model's kernels (`Policy.layer_overhead_s`, L l
for the L layers a rank runs: kernel boundaries and the small kernels around the priced ones, so a
36-layer model does not pay a 94-layer model's fixed step time), and the scales s and m on the step
model's prefill time of a step's prompt tokens, s in prompt-only steps and m in steps that also decode
(`Policy.prefill_scale`, `Policy.mixed_prefill_scale`: the backend's prefill kernels against the
calibrated ones moesim prices, and what prompts cost among decodes; apart because a disaggregated
prefill engine only runs the first kind, an aggregated engine in a closed loop almost only the second).
A run at the profile's (c0, l0, r0, h0, s0, m0) also counts, per measured request, the engine steps it
waited through before its first token (n_first) and the steps per output token while it decoded (n_tpot,
1 in vLLM's mixed steps, more where SGLang runs prefill steps between decode steps), and the step
model's prefill time in those steps, in prompt-only and in mixed steps (p_first, q_first: its own
prompt's and the ones before it; p_tpot, q_tpot: the prompts that shared or interrupted its decode steps,
per output token). The target is the first-order expansion

    TTFT(c, l, s, m, r, R) = sum_k w_k(R) [TTFT0_k + (c - c0 + L (l - l0)) n_first_k + (s - s0) p_first_k
                                           + (m - m0) q_first_k] + (r - r0) [+ (h - h0) disagg],
    TPOT(c, l, s, m, r, R) = sum_k w_k(R) [TPOT0_k + (c - c0 + L (l - l0)) n_tpot_k + (s - s0) p_tpot_k
                                           + (m - m0) q_tpot_k] - (r - r0) / (OSL - 1)

over the simulated rounds k (their means, `weighted_mean`'s weights w_k): exact in R and r (the client
sees the first token r later and the last one when the engine made it, as long as r is shorter than a
request's decode), and in c and l while the schedule (which steps form, in which order) does not change
with them. In a deterministic closed loop it does: slower steps shift arrivals against step
boundaries. Measured on 38 benchmarks drawn from the file, moving from the sourced defaults to a
fit's values (per-step CPU 0.25 -> 1.1 ms vLLM, 0.05 -> 1.6 ms SGLang): TPOT from the closure is
within 0.5 % of a re-simulation on average (5.7 % at most); TTFT within 1.5 % (23 % at most). So
`moesim calibrate` re-simulates at the fit's values and fits again until the fit is where it was simulated
(`calibrate_cases.fixed_point`): the shipped values rest on runs at those values. One re-simulation is not
enough where the closure linearises queueing (the prefill scales): stepping from one fit to the next cycled there.

Where the request overhead falls. A delay between the client's send and the engine's queue keeps a
closed loop of fixed lengths in waves: the requests of one round finish within a few decode steps of one
another (the steps are counted in tokens, and every request decodes one a step), so all of them are sent
again before the first one reaches the engine, and they queue behind one another's prompts round after
round, as the burst did. The measured TTFTs rule that out: DeepSeek-R1 FP8 under SGLang on 8 x H200 with
8k + 1k tokens measures 447, 503 and 700 ms at 4, 8 and 16 clients, where waves would add half a prompt's
prefill per client (an 8k-token prefill of 42 ms). With no delay before the queue, each re-sent prompt
reaches the engine while the next request still decodes, its prefill step holds that request's last token
back, and the round spreads by a prefill per request: the steady rounds' TTFT is one prefill, as measured
at few clients. So r is counted on the first token's way back (`serve.scheduler.Clients`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

from moesim.calibration.kernel_fit import Target
from moesim.serve.scheduler import serving_overhead_names
from moesim.validation.cases import Calibrated, Case, Skip
from moesim.validation.targets import group_of

WHAT = "serving_load"
METRICS = ("ttft_ms", "tpot_ms")
BACKENDS = ("vllm", "sglang", "trtllm")
USED = {"model", "hf_model", "backend", "backend_version", "mode", "isl", "osl", "concurrency", "weights_dtype",
        "moe_dtype", "pool", "prefill", "decode"}
# The KV-cache format, which the records do not state (`kv_cache_format`). The frameworks' default is `auto`
# (vLLM and SGLang --kv-cache-dtype, TensorRT-LLM KvCacheConfig.dtype): the model's activation type, BF16. But with
# a BF16 KV cache, 67 of the 1,629 benchmarks whose KV moesim sizes could not hold their concurrency by the VRAM
# ledger while an FP8 one can (e.g. MiniMax-M2.5 FP8 on 4 x B300 at 512 clients of 8k + 1k tokens: 3.1 M KV
# tokens per rank in BF16, 4.7 M needed), and their measured TTFTs are mostly a few percent of a request's decode
# time - nobody waited for KV. So quantised checkpoints (FP8 / FP4 floating-point GEMMs) are taken to run an FP8 KV cache
# and BF16 / weight-only INT4 checkpoints the default BF16: an inference from the measurements, not a stated setting
# (moesim's full KV reservation at admission, `serve.scheduler`, is the other half of those 67: frameworks allocate
# KV as tokens come).
KV_CACHE_DTYPE = {"fp8": "fp8", "fp8_block": "fp8", "nvfp4": "fp8", "mxfp4": "fp8"}
DEFAULT_KV_CACHE_DTYPE = "bf16"


# The benchmark deployments' step policy where it is not the framework's default (workloads/frameworks.yaml):
# AIConfigurator's generator launches SGLang's aggregated workers with --enable-mixed-chunk, so decode tokens share
# a step with prompt chunks as in vLLM (github ai-dynamo/aiconfigurator src/aiconfigurator/generator/rule_plugin/
# sglang.rule `agg enable_mixed_chunk = true`, since commit 07a377923 of 2026-01-19, and its benchmark/ rule set).
# The file does not say which records ran so; measured on the agg benchmarks of 60 SGLang deployments drawn from it
# (seeded), with the best constant request overhead for each: TTFT MAPE 52 % with prefill-first steps, 36 % mixed
# (TPOT 24 % either way).
AGG_STEP_POLICY = {"sglang": "mixed"}


def step_policy(b: "Benchmark", default: str) -> str:
    """The step policy a benchmark's engine ran (AGG_STEP_POLICY), else the framework's `default`."""
    return AGG_STEP_POLICY.get(b.backend, default) if b.mode == "agg" else default


# The benchmark engines' step token budget and CUDA graphs, as AIConfigurator's generator launches them in
# benchmark mode (github ai-dynamo/aiconfigurator src/aiconfigurator/generator/rule_plugin/benchmark/
# {vllm,sglang,trtllm}.rule, the same in these terms from commit 71bb3d00e of 2026-01-30, before the file's first
# record, to 095f58a51, the file's commit):
# - vLLM `agg max_num_tokens = max_batch_size + isl + 1500`; TensorRT-LLM the same rounded up to its KV block of
#   32 tokens (`tokens_per_block` 32); SGLang `max_prefill_tokens = isl + 1500`, a cap on a step's prompt tokens
#   beside its default chunk (chunked_prefill_size, the framework's step_token_budget), with decode tokens
#   joining the step (--enable-mixed-chunk): moesim's shared budget is then the batch limit plus the smaller
#   of the two. Disaggregated pools keep the framework's budget: their prefill ranks take one prompt at a
#   time (max batch 1, below every default budget) and their decode ranks only decode.
# - every engine: `cuda_graph_batch_sizes = range(1, max_batch_size + 1)`, a graph for every batch up to the
#   limit, so a decode step runs its own batch, never a padded one.
LAUNCH_PROMPT_SLACK = 1500
TRTLLM_TOKENS_PER_BLOCK = 32


def step_token_budget(b: "Benchmark", default: int) -> int:
    """The step token budget of the benchmark's engines (see LAUNCH_PROMPT_SLACK), `default` the framework's."""
    if b.mode != "agg":
        return default
    limit, prompt = b.pool.max_batch, b.isl + LAUNCH_PROMPT_SLACK
    if b.backend == "sglang":
        return limit + min(default, prompt)
    if b.backend == "trtllm":
        return -(-(limit + prompt) // TRTLLM_TOKENS_PER_BLOCK) * TRTLLM_TOKENS_PER_BLOCK
    return limit + prompt


def graph_sizes(b: "Benchmark") -> tuple[int, ...]:
    """The decode batch sizes the benchmark's engines captured CUDA graphs for (see LAUNCH_PROMPT_SLACK)."""
    return tuple(range(1, batch_limit(b) + 1))


def kv_cache_format(weights: str) -> str:
    """The KV-cache format of a benchmark whose checkpoint's GEMM format is `weights` (see KV_CACHE_DTYPE)."""
    return KV_CACHE_DTYPE.get(weights, DEFAULT_KV_CACHE_DTYPE)


# The client's protocol (`load_for`, module docstring). AIConfigurator's benchmark script runs
# `aiperf profile --concurrency C --num-requests C x MULTI_ROUND --warmup-request-count 2C` (github ai-dynamo/
# aiconfigurator src/aiconfigurator/generator/config/backend_templates/benchmark/bench_run.sh.j2); aiperf issues a
# concurrency-only load as a burst behind a semaphore of C and leaves warm-up records out (github ai-dynamo/aiperf
# aiperf/common/config/user_config.py, aiperf/records/records_manager.py). The file does not say how many rounds
# its records measured: that is a fitted parameter (`ROUNDS`, topologies/kernels/benchmark.yaml, the generator's 20
# as its prior), and the rounds enter only the weights of the simulated rounds' means.
ROUNDS = "benchmark.profiled_rounds"   # the kernel-profile parameter of the rounds the file's records measured
SIMULATED_ROUNDS = 4          # the burst, the round after it, one steady round for the rest, the draining last one
MEASURED_TOKENS = 1_048_576   # 4 rounds while the two after the burst generate at most this many tokens, else 3


def simulated_rounds(concurrency: int, osl: int) -> int:
    """Rounds of `concurrency` requests a benchmark's run simulates (module docstring)."""
    return SIMULATED_ROUNDS if 2 * concurrency * osl <= MEASURED_TOKENS else SIMULATED_ROUNDS - 1


def round_means(values, concurrency: int) -> list[float]:
    """Each simulated round's mean (request k in round k // concurrency)."""
    v = np.asarray(values, dtype=float)
    return [float(v[r * concurrency:(r + 1) * concurrency].mean()) for r in range(-(-len(v) // concurrency))]


def steady_round(simulated: int) -> int:
    """Which of `simulated` rounds is the steady one (module docstring): the one before the draining last
    round, or the last of fewer than 3."""
    return simulated - 2 if simulated >= 3 else simulated - 1


def steady_round_weight(simulated: int, rounds: float) -> float:
    """The weight of the steady round (`steady_round`) of `simulated` rounds in the client's mean over
    `rounds` measured ones (each other simulated round weighs 1): it stands for every round not simulated,
    none where `rounds` is no more than the simulated ones. Plain floats: the fit evaluates it for every
    case at every step."""
    return max(rounds - (simulated - 1), 0.0) if simulated > 1 else 1.0


def steady_split(means: list[float]) -> tuple[float, float]:
    """The simulated rounds' `means` as (the sum of the rounds that weigh 1, the steady round's mean), the two
    terms `weighted_mean` and the fit's closure weight."""
    steady = means[steady_round(len(means))]
    return sum(means) - steady, steady


def weighted_mean(means: list[float], rounds: float) -> float:
    """The client's mean over its `rounds` measured rounds from the simulated rounds' `means`."""
    rest, steady = steady_split(means)
    weight = steady_round_weight(len(means), rounds)
    return (rest + weight * steady) / ((len(means) - 1) + weight)


@dataclass(frozen=True)
class Pool:
    """One pool of a benchmark: its split, its per-rank batch limit and (disagg) its instances."""

    tp: int
    attn_dp: int
    moe_tp: int
    moe_ep: int
    gpus: int
    max_batch: int
    workers: int = 1

    def split(self) -> tuple:
        return (self.tp, self.attn_dp, self.moe_tp, self.moe_ep, self.gpus)

    def parallel(self) -> dict:
        """The pool's split as a decode pool's own split (`serve.disagg.make_disagg(decode_parallel=)`)."""
        return {"tp": self.tp, "ep": self.moe_ep, "etp": self.moe_tp}


@dataclass(frozen=True)
class Benchmark:
    """What one benchmark run needs, as plain data (it crosses to pool workers)."""

    key: str            # the run (and its params): both metrics of a benchmark share it
    deployment: str     # the configuration: every concurrency and ISL/OSL of one deployment share it
    model: str
    system: str
    backend: str
    mode: str
    weights: str
    experts: str
    pool: Pool          # agg: the pool; disagg: the prefill pool (the scenario's split)
    decode: Optional[Pool]   # disagg: the decode pool (its own split when it differs)
    isl: int
    osl: int
    concurrency: int
    profile: Optional[str]   # a microbenchmark profile of the system's GPU (validate --profile)
    hf_model: Optional[str] = None   # the checkpoint (`checkpoint_formats`)


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Skip(f"malformed params: {name} must be a whole number > 0, got {value!r}")
    return value


def _pool(p: dict, name: str) -> Pool:
    if not isinstance(p, dict):
        raise Skip(f"malformed params: {name} must be a mapping of the pool's split")
    if int(p.get("pp", 1)) != 1:
        raise Skip(f"{name}: pipeline parallelism (pp {p['pp']}) is not simulated by moesim serve yet")
    tp, gpus = _whole(p.get("tp"), f"{name}.tp"), _whole(p.get("gpus"), f"{name}.gpus")
    attn_dp = _whole(p.get("attn_dp", gpus // tp if gpus % tp == 0 else 0), f"{name}.attn_dp")
    moe_tp, moe_ep = _whole(p.get("moe_tp"), f"{name}.moe_tp"), _whole(p.get("moe_ep"), f"{name}.moe_ep")
    if tp * attn_dp != gpus:
        raise Skip(f"{name}: tp {tp} x attn_dp {attn_dp} is not the pool's {gpus} GPUs (inconsistent record)")
    if moe_tp * moe_ep != gpus:
        raise Skip(f"{name}: the MoE split moe_tp {moe_tp} x moe_ep {moe_ep} = {moe_tp * moe_ep} GPUs does not "
                   f"cover the pool's {gpus} GPUs (tp x attn_dp): inconsistent record")
    return Pool(tp=tp, attn_dp=attn_dp, moe_tp=moe_tp, moe_ep=moe_ep, gpus=gpus,
                max_batch=_whole(p.get("max_batch_per_attn_dp"), f"{name}.max_batch_per_attn_dp"),
                workers=_whole(p.get("workers", 1), f"{name}.workers"))


def config_key(case: Case) -> str:
    """The deployment configuration of a case: model, system, backend and version, mode, pools and
    formats - everything but the load (concurrency, ISL, OSL). `--cv config` leaves one out."""
    p = dict(case.params)
    for k in ("isl", "osl", "concurrency"):
        p.pop(k, None)
    for pool in ("pool", "prefill", "decode"):
        if isinstance(p.get(pool), dict):
            p[pool] = {k: v for k, v in p[pool].items() if k != "max_batch_per_attn_dp"}
    return json.dumps([case.what, case.system, case.gpus, p], sort_keys=True, default=str)


def labels(case: Case) -> dict[str, str]:
    """What `validate` groups a serving_load case's error by."""
    p = case.params
    version = p.get("backend_version")
    return {"system": case.system, "backend": str(p.get("backend")),
            "backend_version": f"{p.get('backend')} {version if version is not None else '(version not stated)'}",
            "mode": str(p.get("mode")), "model": str(p.get("model"))}


def benchmark_of(case: Case, calibration: Optional[Calibrated]) -> Benchmark:
    """The benchmark a case measured, or Skip with the reason (checks that need no simulation)."""
    from moesim.cluster.scenario import framework_table
    if case.metric not in METRICS:
        raise Skip(f"unknown metric {case.metric!r} for serving_load (give one of {', '.join(METRICS)})")
    p = case.params
    backend = p.get("backend")
    if backend not in BACKENDS:
        raise Skip(f"unknown backend {backend!r} (moesim models {', '.join(BACKENDS)})")
    framework = framework_table().frameworks.get(backend)
    if framework is None or framework.batching is None:
        raise Skip(f"backend {backend}: no continuous-batching policy in workloads/frameworks.yaml yet")
    mode = p.get("mode")
    if mode == "agg":
        pool, decode = _pool(p.get("pool"), "pool"), None
    elif mode == "disagg":
        pool, decode = _pool(p.get("prefill"), "prefill"), _pool(p.get("decode"), "decode")
    else:
        raise Skip(f"unknown mode {mode!r} (agg or disagg)")
    serving = decode or pool
    slots = serving.max_batch * serving.attn_dp * serving.workers
    concurrency = _whole(p.get("concurrency"), "concurrency")
    if slots < concurrency:
        raise Skip(f"batch limit of {slots} requests (max_batch_per_attn_dp {serving.max_batch} x attn_dp "
                   f"{serving.attn_dp}{f' x workers {serving.workers}' if decode else ''}) below the {concurrency} "
                   "clients: the file's other records set max_batch_per_attn_dp to the clients per rank, this one to "
                   "the clients per GPU - not the engine's limit (inconsistent record)")
    run = getattr(case, "run", None) or case.id
    key = json.dumps([run, case.system, case.gpus, p], sort_keys=True, default=str)
    return Benchmark(key=key, deployment=config_key(case), model=str(p["model"]), hf_model=p.get("hf_model"),
                     system=case.system, backend=backend, mode=mode, weights=str(p["weights_dtype"]),
                     experts=str(p["moe_dtype"]), pool=pool, decode=decode, isl=_whole(p.get("isl"), "isl"),
                     osl=_whole(p.get("osl"), "osl"), concurrency=concurrency,
                     profile=_profile_path(calibration, case.system))


def _profile_path(calibration: Optional[Calibrated], system: str) -> Optional[str]:
    from moesim.validation.cases import profile_override
    return profile_override(calibration, system).get("runtime.profile")


# A 4-bit float checkpoint on a GPU without FP4 tensor cores (gpt-oss's MXFP4 experts on H100/H200, recorded as
# nvfp4) runs weight-only: vLLM's Marlin / Triton MXFP4 MoE kernels and TensorRT-LLM's W4A16 path dequantise the
# weights in registers and multiply in BF16. moesim's weight-only 4-bit format stands in for it (4.125 bits per
# weight, workloads/dtypes.yaml int4_wo, vs MXFP4's 4.25: the same bytes to 3 %, the same BF16 GEMM peak).
WEIGHT_ONLY_FP4 = "int4_wo"


def _format_on(fmt: str, system: str) -> str:
    """The format a GEMM of `fmt` weights runs in on the system's GPU (see WEIGHT_ONLY_FP4)."""
    from moesim.specs import precision
    from moesim.specs.hardware import load_system
    family = precision.get(fmt, field="weights_dtype").family
    if family == "fp4" and load_system(system).gpu.peak_flops("fp4") is None:
        return WEIGHT_ONLY_FP4
    return fmt


# The records name a 4-bit checkpoint's precision class, not its block format: AIConfigurator files gpt-oss-120b's
# release checkpoint (hf_model openai/gpt-oss-120b: MXFP4 experts, BF16 attention, router, embedding and LM head)
# as nvfp4 weights and nvfp4 experts, and Kimi-K2.5's (INT4 weight-only experts at group 32, BF16 attention, shared
# experts, dense MLP and LM head) as int4_wo throughout. Where a record's model is the model's own release (its
# hf_id) and its expert format is of the release's class (as many bits, the same GEMM peak: `precision_class`),
# the release's formats stand (`ModelSpec.release_formats`, sourced in the model file). A record of another class
# (Kimi-K2.5 as nvfp4 on Blackwell) names another checkpoint of the model and keeps its formats.
def checkpoint_formats(model: str, hf_model: Optional[str], weights: str, experts: str) -> tuple[str, str]:
    """The (weights, experts) formats the benchmarked checkpoint holds (see above)."""
    from moesim.specs.model import load_model
    spec = load_model(model)
    release = spec.release_formats
    if release is None or hf_model != spec.hf_id:
        return weights, experts
    same = precision_class(experts) == precision_class(release.experts)
    return (release.other, release.experts) if same else (weights, experts)


def precision_class(fmt: str) -> tuple[int, Optional[str]]:
    """What a record's format name says of a checkpoint: its bits per weight and the tensor-core peak its
    GEMMs run at (nvfp4 and mxfp4 share one; int4_wo and int4_wo_g32 another)."""
    from moesim.specs import precision
    spec = precision.get(fmt, field="moe_dtype")
    return spec.bits, spec.family


def scenario_overrides(b: Benchmark) -> dict:
    """The scenario of one engine instance of the benchmark's pool (module docstring)."""
    weights, experts = (_format_on(f, b.system) for f in checkpoint_formats(b.model, b.hf_model, b.weights, b.experts))
    overrides = {"model": b.model, "system": b.system, "gpus": b.pool.gpus, "parallel.tp": b.pool.tp,
                 "parallel.dp": b.pool.attn_dp, "parallel.ep": b.pool.moe_ep, "parallel.etp": b.pool.moe_tp,
                 "dtypes.weights": weights, "dtypes.expert_weights": experts if experts != weights else None,
                 "dtypes.kv_cache": kv_cache_format(b.weights), "runtime.framework": b.backend, "seed": 0,
                 "workload": {"kind": "serving", "phase": "decode", "batch": 1, "input_len": b.isl,
                              "output_len": b.osl}}
    overrides["runtime.ep_exchange"] = ep_exchange(b)
    if b.profile:
        overrides["runtime.profile"] = b.profile
    return overrides


# How the benchmarks' attention-DP engines move tokens to their experts (`Runtime.ep_exchange`). AIConfigurator's
# launch templates pass no EP communication backend (github ai-dynamo/aiconfigurator src/aiconfigurator/generator/
# config/backend_templates: vLLM's have no --all2all-backend, SGLang's emit --moe-a2a-backend only where a rule sets
# it and none does), so each engine runs its default: vLLM --all2all-backend allgather_reducescatter (docs.vllm.ai
# 'Expert Parallel Deployment', the default backend), SGLang --moe-a2a-backend none (its DP-attention MoE gathers
# every rank's tokens and scatters the outputs back), TensorRT-LLM all-gather + reduce-scatter unless MNNVL memory is
# available, where it runs its NVLink all-to-all (tensorrt_llm/_torch/modules/fused_moe/fused_moe_cutlass.py
# enable_alltoall: attention DP and MnnvlMemory.supported(), i.e. a multi-node NVLink domain: GB200 / GB300 NVL72).
MNNVL_ALL_TO_ALL = {"trtllm"}


def ep_exchange(b: "Benchmark") -> str:
    """The EP exchange the benchmark's engines ran (see MNNVL_ALL_TO_ALL)."""
    from moesim.specs.hardware import load_system
    system = load_system(b.system)
    mnnvl = system.domain_gpus > system.gpus_per_node
    return "all_to_all" if b.backend in MNNVL_ALL_TO_ALL and mnnvl else "allgather_reducescatter"


def disagg_for(b: Benchmark):
    """Agg: None. Disagg: the pools' instances, the decode pool's split when it is not the prefill's,
    and the prefill pool's own batch limit per rank (its max_batch_per_attn_dp)."""
    from moesim.serve.disagg import make_disagg
    if b.decode is None:
        return None
    own = b.decode.parallel() if b.decode.split() != b.pool.split() else None
    return make_disagg("disagg", b.pool.workers, b.decode.workers, decode_parallel=own,
                       prefill_max_running=b.pool.max_batch)


def batch_limit(b: Benchmark) -> int:
    """The per-rank batch limit (`Policy.max_running`): the pool's, or the decode pool's (module docstring)."""
    return (b.decode or b.pool).max_batch


def load_for(b: Benchmark):
    """The benchmark client's load (module docstring): a burst on an idle engine, then closed-loop rounds,
    every request measured."""
    from moesim.serve.load import make_load
    rounds = simulated_rounds(b.concurrency, b.osl)
    return make_load(concurrency=b.concurrency, isl=b.isl, osl=b.osl, requests=rounds * b.concurrency, warmup=0,
                     closed_loop_start="burst", seed=0)


def target(case: Case, b: Benchmark, run: dict) -> Target:
    """The case's target from its benchmark's run (`serving_load_run.run_benchmark`): the closure of
    the module docstring in the backend's step CPU time, per-layer time, request overhead, hand-over,
    prefill scales and measured rounds."""
    c_name, r_name, h_name, l_name, s_name, m_name = serving_overhead_names(b.backend, run["moe_kernels"])
    c0, r0, h0 = run["step_cpu_ms"], run["request_overhead_ms"], run["disagg_handoff_ms"]
    l0, layers, s0, m0 = run["layer_overhead_us"], run["layers"], run["prefill_scale"], run["mixed_prefill_scale"]

    def step_ms(v: Mapping[str, float]) -> float:
        """How much longer every engine step is at `v` than in the run (CPU plus per-layer time)."""
        return (v[c_name] - c0) + (v[l_name] - l0) * layers / 1e3

    metric, counts, prefill = ("ttft_ms", "steps_before_first_token", "prefill_ms_before_first_token") \
        if case.metric == "ttft_ms" else ("tpot_ms", "steps_per_output_token", "prefill_ms_per_output_token")
    mixed = "mixed_" + prefill
    rounds = run["rounds"]
    n = len(rounds[metric])
    (rest_value, value), (rest_steps, n_steps), (rest_prompt, prompt), (rest_mixed, mixed_prompt) = (
        steady_split(rounds[key]) for key in (metric, counts, prefill, mixed))

    def means(v: Mapping[str, float]) -> float:
        """The metric's mean over the measured rounds at `v`, with the step counts' and the prefill times'
        means (`weighted_mean` of each with one weight: the fit evaluates every case at every step)."""
        weight = steady_round_weight(n, v[ROUNDS])
        return ((rest_value + weight * value) + step_ms(v) * (rest_steps + weight * n_steps)
                + (v[s_name] - s0) * (rest_prompt + weight * prompt)
                + (v[m_name] - m0) * (rest_mixed + weight * mixed_prompt)) / ((n - 1) + weight)

    if case.metric == "ttft_ms" and b.mode == "disagg":
        def model(v: Mapping[str, float]) -> float:
            return means(v) + (v[r_name] - r0) + (v[h_name] - h0)
    elif case.metric == "ttft_ms":
        def model(v: Mapping[str, float]) -> float:
            return means(v) + (v[r_name] - r0)
    else:   # the first token seen later, the last one not: (last - first) / (OSL - 1) is that much shorter
        gaps = max(b.osl - 1, 1)   # one output token has no TPOT (NaN): nothing to move, and no division by 0

        def model(v: Mapping[str, float]) -> float:
            return means(v) - (v[r_name] - r0) / gaps
    ignored = [k for k in case.params if k not in USED]
    return Target(id=case.id, what=case.what, metric=case.metric, measured=case.measured, group=group_of(case),
                  model=model, ignored=ignored)


# Backends whose benchmark launch turned prompt-prefix reuse off, so that no two clients share KV: AIConfigurator's
# TensorRT-LLM templates write `enable_block_reuse: false` (github ai-dynamo/aiconfigurator src/aiconfigurator/
# generator/config/backend_templates/trtllm/extra_engine_args.*.yaml.j2), while its vLLM and SGLang launches keep
# their prefix caches on and aiperf draws prompts from a pool of 100 (docs/serving-validation.md, the prompt-reuse
# probe): there clients with the same prompt may share its KV, and a KV bound on the clients says nothing.
NO_PREFIX_REUSE = {"trtllm"}


def record_contradiction(b: Benchmark, kv_demand: float, measured: Mapping[str, float]) -> Optional[str]:
    """Why a record cannot have run as recorded, or None. Where the clients' KV needs k > 1 times the HBM the
    weights leave on the serving GPUs (`serving_load_run.kv_demand`: a client holds its prompt and on average half
    its output, the memory fraction and every other reserve left out) and no two clients share KV
    (`NO_PREFIX_REUSE`), at most 1 / k of them hold their requests at once, and in a closed loop each of the others
    waits for requests to finish. By Little's law, with D the decode time of a request ((OSL - 1) x the measured
    TPOT), the cycle TTFT + D of a client is at least k D, so TTFT >= (k - 1) D. A record whose measured TTFT is
    shorter ran another split than the recorded one; both its metrics are skipped: the deployment they would
    validate is not the one that ran."""
    ttft, tpot = measured.get("ttft_ms"), measured.get("tpot_ms")
    if b.backend not in NO_PREFIX_REUSE or kv_demand <= 1 or ttft is None or tpot is None or b.osl < 2:
        return None
    decode_ms = (b.osl - 1) * tpot
    least_ms = (kv_demand - 1) * decode_ms
    if ttft >= least_ms:
        return None
    seconds = max(decode_ms, least_ms) >= 1e4   # one unit for the three durations

    def duration(ms: float) -> str:
        return f"{ms / 1e3:.1f} s" if seconds else f"{ms:.0f} ms"
    return (f"inconsistent record: its {b.concurrency:,} clients' KV needs {kv_demand:.1f} x the HBM the weights "
            f"leave on each GPU of the recorded split, so by Little's law the mean TTFT is at least "
            f"({kv_demand:.1f} - 1) x a request's decode of {duration(decode_ms)} = {duration(least_ms)}, yet it "
            f"measured {duration(ttft)}: another split ran")


def prepare_many(cases: list[Case], calibration_of: Callable[[Case], Optional[Calibrated]], profile,
                 workers: int = 1) -> dict[str, Target | Skip]:
    """Every serving_load case's target, or its Skip: each benchmark simulated once for both metrics,
    the benchmarks of one deployment in one process (they share its step-time function), deployments
    spread over `workers` processes. Results do not depend on `workers` (each run depends only on its
    own inputs)."""
    from moesim.validation.serving_load_run import run_groups
    out: dict[str, Target | Skip] = {}
    benches: dict[str, Benchmark] = {}
    wanted: list[tuple[Case, str]] = []
    measured: dict[str, dict[str, float]] = {}
    for case in cases:
        try:
            b = benchmark_of(case, calibration_of(case))
        except Skip as exc:
            out[case.id] = exc
            continue
        except (KeyError, TypeError, ValueError) as exc:
            out[case.id] = Skip(f"malformed params ({type(exc).__name__}: {exc})")
            continue
        benches.setdefault(b.key, b)
        wanted.append((case, b.key))
        measured.setdefault(b.key, {})[case.metric] = case.measured
    groups: dict[str, list[Benchmark]] = {}
    for b in benches.values():
        groups.setdefault(b.deployment, []).append(b)
    runs = run_groups(list(groups.values()), profile, workers=workers)
    for case, key in wanted:
        run = runs[key]
        if "skip" in run:
            out[case.id] = Skip(run["skip"])
            continue
        contradiction = record_contradiction(benches[key], run["kv_demand"], measured[key])
        out[case.id] = Skip(contradiction) if contradiction else target(case, benches[key], run)
    return out


__all__ = ["Benchmark", "METRICS", "NO_PREFIX_REUSE", "Pool", "ROUNDS", "WHAT", "batch_limit", "benchmark_of",
           "config_key", "disagg_for", "ep_exchange", "graph_sizes", "labels", "load_for", "prepare_many",
           "record_contradiction", "round_means", "scenario_overrides", "simulated_rounds", "steady_round",
           "steady_round_weight", "steady_split", "step_policy", "step_token_budget", "target", "weighted_mean"]
