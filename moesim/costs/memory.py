"""The VRAM ledger: what each GPU holds for a scenario, whether it fits, and what room is left.

Parts (bytes per GPU): weights, KV cache, activations, communication buffers, reserved
(CUDA context, CUDA graphs), and for training gradients and optimizer states. The ledger is
computed for every pipeline stage and reported for the fullest one, because that GPU decides
whether the job fits. Every part is a plain function of the scenario so each can be tested.

Modelling choices (and where they come from):
- Weights: experts sharded by EP over (experts + redundant) slots and split by `etp`; attention,
  dense MLP and shared experts split by TP; embeddings/LM head vocab-parallel over TP; norms and
  routers replicated. MLA's down-projections (q_a, kv_a) are replicated across TP as in vLLM's
  DeepseekV2 attention; GQA KV heads are replicated when tp > KV heads.
- KV cache: MLA keeps the latent on every TP rank (vLLM/SGLang MLA); GQA splits KV heads over TP.
  Sliding-window/chunked layers hold at most their window. Linear-attention layers (Gated
  DeltaNet) hold no KV but a fixed state per sequence (recurrent state in its own format, conv
  window in the KV format), split over TP by value heads as vLLM shards them; the DSA indexer's
  key (one per token per layer) is cached beside the MLA latent, on every TP rank.
- Activations: an estimate of the live tensors of one forward (serving) or of the micro-batches
  in flight under 1F1B (training; Korthikanti et al. 2022, "Reducing Activation Recomputation in
  Large Transformer Models", with flash attention so no s^2 term, sequence parallel with TP).
- Training states: BF16 weights, FP32 main gradients, Adam FP32 master + 2 moments = 12 B/param
  (Megatron-LM distributed optimizer), sharded over DP for dense and over expert-DP for experts.
"""
from __future__ import annotations

import math
from typing import Optional

from moesim.cluster.scenario import Scenario, Serving, Training, framework_table
from moesim.core.loader import Record
from moesim.costs.exchange import moe_exchange
from moesim.specs import precision
from moesim.specs.model import ModelSpec
from moesim.specs.parallelism import ParallelPlan, stage_layers

FP32 = 4
PART_KEYS = ("weights_bytes", "kv_cache_bytes", "activations_bytes", "buffers_bytes",
             "reserved_bytes", "optimizer_bytes", "gradients_bytes")


class StageLedger(Record):
    stage: int
    layers: int
    weights_bytes: float
    kv_cache_bytes: float
    activations_bytes: float
    buffers_bytes: float
    reserved_bytes: float
    optimizer_bytes: float
    gradients_bytes: float

    @property
    def total_bytes(self) -> float:
        return sum(getattr(self, k) for k in PART_KEYS)


class MemoryLedger(Record):
    """Per-GPU VRAM of the fullest pipeline stage, with the budget it must fit in."""

    scenario: str
    per_gpu: dict[str, float]
    budget_bytes: float
    memory_fraction: float
    fits: bool
    headroom_bytes: float
    binding_stage: int
    stages: list[StageLedger]
    max_kv_tokens_per_gpu: Optional[int] = None
    max_micro_batch: Optional[int] = None
    kv_bytes_per_token_per_gpu: Optional[float] = None
    state_bytes_per_sequence_per_gpu: Optional[float] = None
    weight_params_per_gpu: float

    def to_json(self) -> dict:
        out = {"scenario": self.scenario, "per_gpu": self.per_gpu, "fits": self.fits,
               "budget_bytes": self.budget_bytes, "memory_fraction": self.memory_fraction,
               "headroom_bytes": self.headroom_bytes, "binding_stage": self.binding_stage,
               "weight_params_per_gpu": self.weight_params_per_gpu,
               "stages": [dict(s.model_dump(), total_bytes=s.total_bytes) for s in self.stages]}
        if self.max_kv_tokens_per_gpu is not None:
            out["max_kv_tokens_per_gpu"] = self.max_kv_tokens_per_gpu
            out["kv_bytes_per_token_per_gpu"] = self.kv_bytes_per_token_per_gpu
        if self.state_bytes_per_sequence_per_gpu:
            out["state_bytes_per_sequence_per_gpu"] = self.state_bytes_per_sequence_per_gpu
        if self.max_micro_batch is not None:
            out["max_micro_batch"] = self.max_micro_batch
        return out


# ---------------------------------------------------------------- weights
def _attention_split(model: ModelSpec, tp: int) -> tuple[float, float]:
    """(parameters per GPU of one attention block, of which replicated across TP)."""
    a, d = model.attention, model.hidden_size
    total = model.attention_params
    if a.type == "mla":
        replicated = d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
        if a.q_lora_rank:
            replicated += d * a.q_lora_rank + a.q_lora_rank
        return (total - replicated) / tp + replicated, replicated
    kv = 2 * d * a.num_key_value_heads * a.head_dim + (2 * a.num_key_value_heads * a.head_dim if a.qkv_bias else 0)
    kv_share = max(a.num_key_value_heads / tp, 1) / a.num_key_value_heads
    return (total - kv) / tp + kv * kv_share, 0.0


def _layer_attention_per_gpu(model: ModelSpec, index: int, tp: int, full: float) -> float:
    """Token-mixer parameters one GPU holds for layer `index`: `full` (the attention split) on an
    attention layer, plus the DSA indexer (replicated across TP, as vLLM's DeepSeek-V3.2 indexer);
    a linear-attention layer's projections split over TP (heads sharded)."""
    if model.attention_kind(index) == "linear":
        return model.linear_attention_params / tp
    return full + model.indexer_params


def stage_weight_bytes(sc: Scenario, layers: range, *, first: bool, last: bool) -> tuple[float, float]:
    """(bytes, parameters) one GPU of a pipeline stage holds."""
    m, plan, dt = sc.model, sc.plan, sc.input.dtypes
    w = precision.bytes_per_element(dt.weights)
    w_att = precision.bytes_per_element(dt.attention_weights or dt.weights)
    w_exp = precision.bytes_per_element(dt.expert_weights or dt.weights)
    bf16 = precision.bytes_per_element("bf16")
    full_att, _ = _attention_split(m, plan.tp)
    slots_per_gpu = (m.moe.num_experts + sc.input.experts.redundant) / plan.ep
    nbytes = params = 0.0
    moe = set(m.moe_layer_indices)
    for i in layers:
        att_params = _layer_attention_per_gpu(m, i, plan.tp, full_att)
        parts = [(att_params, w_att), (m.norm_params_per_layer, bf16)]
        if i in moe:
            parts += [(slots_per_gpu * m.routed_expert_params / plan.etp, w_exp),
                      (m.shared_experts_params / plan.tp, w), (m.router_params, bf16)]
        else:
            parts.append((m.dense_mlp_params / plan.tp, w))
        nbytes += sum(p * b for p, b in parts)
        params += sum(p for p, _ in parts)
    edge = []
    if first:
        edge += [m.embedding_params / plan.tp, m.vision_params / plan.tp]
    if last:
        edge += [m.final_norm_params, (m.head_params or (m.head_matmul_params if plan.pp > 1 else 0)) / plan.tp]
    return nbytes + sum(edge) * bf16, params + sum(edge)


def expert_params_per_gpu(sc: Scenario, layers: range) -> float:
    m, plan = sc.model, sc.plan
    slots = (m.moe.num_experts + sc.input.experts.redundant) / plan.ep
    return sum(slots * m.routed_expert_params / plan.etp for i in layers if i in set(m.moe_layer_indices))


# ---------------------------------------------------------------- KV cache
def kv_share_per_gpu(model: ModelSpec, tp: int) -> float:
    """Fraction of a layer's KV a TP rank stores: 1 for MLA (latent replicated), heads/tp for GQA."""
    if model.attention.type == "mla":
        return 1.0
    k = model.attention.num_key_value_heads
    return max(k / tp, 1) / k


def state_share_per_gpu(model: ModelSpec, tp: int) -> float:
    """Fraction of a linear-attention layer's state a TP rank stores (value heads split over TP)."""
    lin = model.linear_attention
    if lin is None:
        return 1.0
    return max(lin.num_value_heads / tp, 1) / lin.num_value_heads


def state_bytes_per_sequence(sc: Scenario, layers: range) -> float:
    """Fixed bytes one sequence holds on one GPU over the stage's linear-attention layers, whatever
    its context (0 for a model without them)."""
    m = sc.model
    lin = m.linear_attention
    if lin is None:
        return 0.0
    count = sum(1 for i in layers if m.attention_kind(i) == "linear")
    kv_b = precision.bytes_per_element(sc.input.dtypes.kv_cache)
    state_b = precision.bytes_per_element(lin.state_dtype) if lin.state_dtype else None
    return count * m.layer_state_bytes(kv_b, state_b) * state_share_per_gpu(m, sc.plan.tp)


def kv_tokens_bytes_per_sequence(sc: Scenario, layers: range, context_len: int) -> float:
    """KV bytes of one sequence of `context_len` tokens on one GPU over the stage's layers (the part
    that grows with the context)."""
    m = sc.model
    held = m.kv_tokens_held(context_len)
    kv_layers = [i for i in layers if i < len(held)]
    per_elem = precision.bytes_per_element(sc.input.dtypes.kv_cache) * kv_share_per_gpu(m, sc.plan.tp)
    return sum(held[i] for i in kv_layers) * m.kv_elements_per_token_per_layer * per_elem


def kv_bytes_per_sequence(sc: Scenario, layers: range, context_len: int) -> float:
    """Cache bytes one sequence holds on one GPU: its KV plus, once, any linear-attention state."""
    return kv_tokens_bytes_per_sequence(sc, layers, context_len) + state_bytes_per_sequence(sc, layers)


# ---------------------------------------------------------------- activations
def _attention_act_per_token(m: ModelSpec, tp: int, a_bytes: float, *, absorbed: bool) -> float:
    att = m.attention
    h = att.num_attention_heads / tp
    if att.type == "mla":
        if absorbed:
            return (2 * h * (att.kv_lora_rank + att.qk_rope_head_dim) + att.kv_lora_rank) * a_bytes
        qk = att.qk_nope_head_dim + att.qk_rope_head_dim
        latents = (att.q_lora_rank or 0) + att.kv_lora_rank + att.qk_rope_head_dim
        return (h * (2 * qk + 2 * att.v_head_dim) + latents) * a_bytes + h * FP32
    kv = max(att.num_key_value_heads / tp, 1)
    return (2 * h * att.head_dim + 2 * kv * att.head_dim) * a_bytes + h * FP32


def _moe_pairs_per_token(sc: Scenario) -> float:
    """Token-expert pairs one GPU processes per token of its DP rank (balanced routing)."""
    p = sc.plan
    return sc.model.moe.num_experts_per_tok * p.dp / (p.ep * p.edp)


def _moe_act_per_token(sc: Scenario, a_bytes: float) -> float:
    m, p = sc.model, sc.plan
    d = m.hidden_size
    routed = _moe_pairs_per_token(sc) * (2 * d + 3 * m.moe.moe_intermediate_size / p.etp) * a_bytes
    shared = m.moe.num_shared_experts * 3 * (m.moe.shared_expert_intermediate_size or 0) / p.tp * a_bytes
    return routed + shared + m.moe.num_experts * FP32


def serving_activation_bytes(sc: Scenario, w: Serving) -> float:
    """Peak live activations of one forward pass on one GPU."""
    m, p = sc.model, sc.plan
    a = precision.bytes_per_element(sc.input.dtypes.activations)
    tokens = w.batch if w.phase == "decode" else (w.prefill_chunk_tokens or w.batch * w.input_len)
    stream = 4 * m.hidden_size * a
    attn = _attention_act_per_token(m, p.tp, a, absorbed=w.phase == "decode")
    dense = 3 * (m.layers.dense_intermediate_size or 0) / p.tp * a
    moe = _moe_act_per_token(sc, a)
    logits = w.batch * m.vocab_size / p.tp * FP32
    return tokens * (stream + max(attn, dense, moe)) + logits


def training_activation_bytes_per_sequence(sc: Scenario, w: Training, layers: range, *, last: bool) -> float:
    """Saved activations of one sequence through one stage's layers (per GPU)."""
    m, p = sc.model, sc.plan
    a = precision.bytes_per_element(sc.input.dtypes.activations)
    d = m.hidden_size
    sp = p.tp  # sequence parallel: the hidden-sized tensors are split over TP too
    moe_layers = set(m.moe_layer_indices)
    per_token = 0.0
    for i in layers:
        if w.recompute == "full":
            per_token += 2 * d * a / sp
            continue
        attn = _attention_act_per_token(m, p.tp, a, absorbed=False)
        if w.recompute == "selective":
            attn = 0.0  # core attention recomputed in backward (Megatron selective recompute)
        body = _moe_act_per_token(sc, a) if i in moe_layers else 3 * (m.layers.dense_intermediate_size or 0) / p.tp * a
        per_token += 4 * d * a / sp + attn + body
    if w.recompute == "full" and len(layers):
        per_token += 4 * d * a / sp + _attention_act_per_token(m, p.tp, a, absorbed=False) + _moe_act_per_token(sc, a)
    logits = m.vocab_size / p.tp * FP32 if last else 0.0
    return w.seq_len * (per_token + logits)


def microbatches_in_flight(plan: ParallelPlan, w: Training, stage: int) -> int:
    """1F1B: stage s holds up to pp - s micro-batches' activations (Narayanan et al. 2021)."""
    per_step = max(w.global_batch // (plan.dp * w.micro_batch), 1)
    return min(plan.pp - stage, per_step)


# ---------------------------------------------------------------- buffers
def ep_buffer_bytes(sc: Scenario) -> float:
    """DeepEP buffers: low-latency layout for decode, NVLink (+RDMA across domains) otherwise; none
    where a serving step runs no EP library (`costs.exchange.moe_exchange`)."""
    p, m = sc.plan, sc.model
    w = sc.input.workload
    if p.ep == 1 or (isinstance(w, Serving) and moe_exchange(sc) != "all_to_all"):
        return 0.0
    eb = framework_table().ep_buffers
    if isinstance(w, Serving) and w.phase == "decode":
        tokens = eb.deepep_low_latency.max_dispatch_tokens_per_rank.value
        h, experts = m.hidden_size, m.moe.num_experts + sc.input.experts.redundant
        dispatch_msg = 16 + max(2 * h, h + 4 * h // 128)
        combine_msg = 2 * h
        send = max(tokens * dispatch_msg, experts * tokens * combine_msg)
        recv = experts * tokens * max(dispatch_msg, combine_msg)
        return 2.0 * (send + recv + experts * 8)
    spans_domains = p.ep * p.etp > sc.system.domain_gpus
    return eb.deepep_normal.nvl_bytes.value + (eb.deepep_normal.rdma_bytes.value if spans_domains else 0.0)


# ---------------------------------------------------------------- ledger
def _stage(sc: Scenario, index: int, layers: range, *, kv_per_seq: float, first: bool,
           last: bool) -> tuple[StageLedger, float]:
    w = sc.input.workload
    fw = sc.framework
    weights, params = stage_weight_bytes(sc, layers, first=first, last=last)
    kv = act = grads = opt = 0.0
    if isinstance(w, Serving):
        kv = w.batch * kv_per_seq
        act = serving_activation_bytes(sc, w)
        reserved = fw.cuda_context_bytes.value + fw.cuda_graph_bytes.value
    else:
        act = microbatches_in_flight(sc.plan, w, index) * w.micro_batch * \
            training_activation_bytes_per_sequence(sc, w, layers, last=last)
        reserved = fw.cuda_context_bytes.value
        expert = expert_params_per_gpu(sc, layers)
        dense = params - expert
        shard_dense = sc.plan.dp if w.zero_stage >= 1 else 1
        shard_expert = sc.plan.edp if w.zero_stage >= 1 else 1
        state = 12 if w.optimizer == "adam" else 8
        opt = state * (dense / shard_dense + expert / shard_expert)
        g_dense = sc.plan.dp if w.zero_stage >= 2 else 1
        g_expert = sc.plan.edp if w.zero_stage >= 2 else 1
        grads = FP32 * (dense / g_dense + expert / g_expert)
        if w.zero_stage == 3:
            weights = weights * (dense / sc.plan.dp + expert / sc.plan.edp) / max(params, 1)
    buffers = ep_buffer_bytes(sc) + fw.non_torch_bytes.value
    return StageLedger(stage=index, layers=len(layers), weights_bytes=weights, kv_cache_bytes=kv,
                       activations_bytes=act, buffers_bytes=buffers, reserved_bytes=reserved,
                       optimizer_bytes=opt, gradients_bytes=grads), params


def kv_room_bytes(sc: Scenario, stage: StageLedger, capacity: float) -> float:
    """Bytes of one GPU of `stage` its serving framework gives the KV cache, by the framework's own
    rule (`kv_budget_rule` in workloads/frameworks.yaml, with its source), f = memory fraction:

    - of_total (vLLM V1): f x capacity - weights - activation peak - buffers (NCCL/non-torch, EP);
      CUDA context and graphs live in the 1 - f slack (vllm_kv_budget_bytes);
    - static_of_free_before_load (SGLang): f x (capacity - CUDA context - non-torch) - weights;
      activations, graphs and EP buffers live in the rest (sglang_kv_budget_bytes);
    - of_free_after_load (TensorRT-LLM): f x what weights, activations, buffers and the reserved
      CUDA context and graphs leave;
    - none (training frameworks): f x capacity less everything else the ledger counts."""
    fw, f = sc.framework, sc.memory_fraction
    parts = {"capacity_bytes": capacity, "weights_bytes": stage.weights_bytes,
             "activations_bytes": stage.activations_bytes, "buffers_bytes": stage.buffers_bytes}
    rule = fw.kv_budget_rule.value if fw.kv_budget_rule is not None else None
    if rule == "of_total":
        return vllm_kv_budget_bytes(parts, f, 0.0)
    if rule == "static_of_free_before_load":
        return sglang_kv_budget_bytes(parts, f, fw.cuda_context_bytes.value, fw.non_torch_bytes.value)
    others = stage.total_bytes - stage.kv_cache_bytes
    if rule == "of_free_after_load":
        return f * (capacity - others)
    return f * capacity - others


def vllm_kv_budget_bytes(per_gpu: dict, fraction: float, cuda_graph_bytes: float) -> float:
    """vLLM V1 `Worker.determine_available_memory` from ledger parts (bytes per GPU).

    requested (= capacity x gpu_memory_utilization) - weights - profiling activation peak -
    non-torch (the ledger's buffers: NCCL/non-torch + any EP all-to-all buffers, which vLLM
    allocates on first use inside the profiling run) - CUDA-graph estimate (0 before v0.21).
    """
    return (fraction * per_gpu["capacity_bytes"] - per_gpu["weights_bytes"] - per_gpu["activations_bytes"]
            - per_gpu["buffers_bytes"] - cuda_graph_bytes)


def sglang_kv_budget_bytes(per_gpu: dict, fraction: float, cuda_context_bytes: float,
                           non_torch_bytes: float) -> float:
    """SGLang `ModelRunner.profile_max_num_token` from ledger parts (bytes per GPU).

    rest = free_after_load - free_before_load x (1 - mem_fraction_static), with
    free_before_load = capacity - CUDA context - non-torch (NCCL, custom all-reduce) and
    free_after_load = free_before_load - weights.
    """
    free_before = per_gpu["capacity_bytes"] - cuda_context_bytes - non_torch_bytes
    return fraction * free_before - per_gpu["weights_bytes"]


def memory_ledger(sc: Scenario) -> MemoryLedger:
    """Per-GPU VRAM for the scenario, with fit, headroom and the largest KV / micro-batch that fits."""
    w = sc.input.workload
    stages = stage_layers(sc.model.num_hidden_layers, sc.plan.pp)
    ledgers, params, kv_seq, state_seq = [], [], [], []
    for index, layers in enumerate(stages):
        serving = isinstance(w, Serving)
        tokens_part = kv_tokens_bytes_per_sequence(sc, layers, w.context_len) if serving else 0.0
        state = state_bytes_per_sequence(sc, layers) if serving else 0.0
        ledger, p = _stage(sc, index, layers, kv_per_seq=tokens_part + state, first=index == 0,
                           last=index == len(stages) - 1)
        ledgers.append(ledger)
        params.append(p)
        kv_seq.append(tokens_part)
        state_seq.append(state)
    binding = max(range(len(ledgers)), key=lambda i: ledgers[i].total_bytes)
    top = ledgers[binding]
    capacity = sc.system.gpu.capacity_bytes
    budget = sc.memory_fraction * capacity
    per_gpu = {k: getattr(top, k) for k in PART_KEYS}
    per_gpu["total_bytes"] = top.total_bytes
    per_gpu["capacity_bytes"] = capacity
    result = dict(scenario=sc.input.name, per_gpu=per_gpu, budget_bytes=budget,
                  memory_fraction=sc.memory_fraction, fits=top.total_bytes <= budget,
                  headroom_bytes=budget - top.total_bytes, binding_stage=binding, stages=ledgers,
                  weight_params_per_gpu=params[binding])
    if isinstance(w, Serving):
        # room for KV on the tightest stage, in tokens of this workload's context mix; a sequence's
        # fixed linear-attention state is counted once per sequence, i.e. spread over its context
        per_token = max(kv_seq[i] / w.context_len for i in range(len(ledgers)))
        per_token_with_state = max((kv_seq[i] + state_seq[i]) / w.context_len for i in range(len(ledgers)))
        room = min(kv_room_bytes(sc, lg, capacity) for lg in ledgers)
        result["kv_bytes_per_token_per_gpu"] = per_token
        result["state_bytes_per_sequence_per_gpu"] = max(state_seq)
        result["max_kv_tokens_per_gpu"] = max(int(room // per_token_with_state), 0) \
            if per_token_with_state > 0 else 0
    else:
        result["max_micro_batch"] = _max_micro_batch(sc, w, ledgers, budget)
    return MemoryLedger(**result)


def _max_micro_batch(sc: Scenario, w: Training, ledgers: list[StageLedger], budget: float) -> int:
    """Largest micro-batch whose activations fit on every stage (activations scale linearly)."""
    best = math.inf
    for lg in ledgers:
        per_mb = lg.activations_bytes / w.micro_batch
        room = budget - (lg.total_bytes - lg.activations_bytes)
        if per_mb > 0:
            best = min(best, room // per_mb)
    return int(max(best, 0)) if best != math.inf else 0
