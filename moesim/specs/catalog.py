"""Summaries of the built-in models and systems, for `moesim models` and `moesim systems`."""
from __future__ import annotations

from moesim.specs.hardware import load_system, system_names
from moesim.specs.model import load_model, model_names


def model_rows() -> list[dict]:
    rows = []
    for name in model_names():
        m = load_model(name)
        rows.append({
            "id": m.id, "name": m.name, "total_params": m.total_params, "active_params": m.active_params,
            "active_params_with_embedding": m.active_params_with_embedding,
            "experts": m.moe.num_experts, "top_k": m.moe.num_experts_per_tok,
            "shared_experts": m.moe.num_shared_experts, "moe_layers": m.num_moe_layers,
            "layers": m.num_hidden_layers, "hidden_size": m.hidden_size, "attention": m.attention.type,
            "kv_bytes_per_token": int(m.kv_bytes_per_token(2)), "kv_dtype_of_kv_bytes": "bf16",
        })
    return rows


def system_rows() -> list[dict]:
    rows = []
    for name in system_names():
        s = load_system(name)
        spec = s.spec
        rows.append({
            "id": s.id, "name": spec.name, "gpu": s.gpu.id, "gpus_per_node": s.gpus_per_node,
            "node": s.node_label, "nvlink_domain": s.spec.domain_name or "one node",
            "nvlink_domain_gpus": s.domain_gpus,
            "nvlink_GBps_per_direction": spec.scale_up.per_gpu_GBps_per_direction.value,
            "scale_out_Gbps_per_gpu": spec.scale_out.nics_per_gpu.value * spec.scale_out.nic_Gbps.value,
            "hbm_capacity_bytes": s.gpu.capacity_bytes,
            "bf16_dense_TFLOPs": s.gpu.dense_TFLOPs.bf16.value,
            "fp8_dense_TFLOPs": s.gpu.dense_TFLOPs.fp8.value,
            "fp4_dense_TFLOPs": s.gpu.dense_TFLOPs.fp4.value,
        })
    return rows
