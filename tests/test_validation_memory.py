"""Weights per GPU against the open `memory` validation cases (framework logs), as evidence.

Reads ../shared/validation/cases.yaml (tests may; the package never does). The dtype mapping
below follows each checkpoint's published quantisation: MXFP4/NVFP4/FP8-expert releases keep
attention and dense parts in BF16. The bound is the project's end-to-end accuracy target (10%);
`moesim validate` will take this over when the validation issue lands.
"""
from pathlib import Path

import pytest
import yaml

from moesim.memory import memory_ledger
from moesim.scenario import load_scenario

CASES = Path(__file__).resolve().parents[2] / "shared" / "validation" / "cases.yaml"
EXPERTS_ONLY = {("mxfp4", None), ("nvfp4", None), ("fp8", "llama4-maverick")}


def weight_cases():
    if not CASES.is_file():
        return []
    cases = yaml.safe_load(CASES.read_text())["cases"]
    return [c for c in cases if c["what"] == "memory" and c["metric"] == "weights_GiB_per_gpu"]


def overrides(case):
    p = case["params"]
    dtype, model = p["dtype"], p["model"]
    expert_only = (dtype, None) in EXPERTS_ONLY or (dtype, model) in EXPERTS_ONLY
    return {"model": model, "system": case["system"], "gpus": case["gpus"],
            "parallel.tp": p["parallel"]["tp"], "parallel.ep": p["parallel"].get("ep", 1),
            "dtypes.weights": "bf16" if expert_only else dtype,
            "dtypes.expert_weights": dtype if expert_only else None,
            "runtime.framework": p.get("framework", "vllm")}


@pytest.mark.skipif(not CASES.is_file(), reason="shared/validation/cases.yaml not present beside the checkout")
@pytest.mark.parametrize("case", weight_cases(), ids=lambda c: c["id"])
def test_weights_per_gpu_within_target(case):
    predicted = memory_ledger(load_scenario(None, overrides(case))).per_gpu["weights_bytes"] / 2**30
    error = (predicted - case["measured"]) / case["measured"]
    print(f"{case['id']}: measured {case['measured']:.2f} GiB predicted {predicted:.2f} GiB ({error:+.1%})")
    assert abs(error) <= 0.10
