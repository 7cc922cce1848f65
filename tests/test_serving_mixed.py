"""Served-throughput cases (phase `mixed`) predicted by the request-level simulator (`validation.serving_mixed`)."""
from pathlib import Path

import pytest

from moesim.validation.cases import Case, Skip, load_cases
from moesim.validation.serving import predict_serving
from moesim.validation.serving_mixed import engine_of

CASES = Path(__file__).resolve().parents[1] / "validation" / "cases.yaml"
TRTLLM_ID = "trtllm-b200x8-r1-fp4-bf16kv-maxtput"


def _case(case_id: str) -> Case:
    return next(c for c in load_cases(str(CASES)) if c.id == case_id)


def _with(case: Case, **params) -> Case:
    merged = dict(case.params, **params)
    return case.model_copy(update={"params": {k: v for k, v in merged.items() if v is not None}})


def test_the_engine_is_the_framework_whose_repository_the_source_is():
    assert engine_of(_case(TRTLLM_ID)) == "trtllm"
    assert engine_of(_case("mlperf41-mixtral-8x7b-dgx-h100x8-offline")) is None   # an MLPerf log, no engine named
    moved = _case(TRTLLM_ID).model_copy(update={"source": "github vllm-project/vllm docs/x.md (commit 0)"})
    assert engine_of(moved) == "vllm"
    # a repository whose name merely starts like a framework's is not that framework
    assert engine_of(moved.model_copy(update={"source": "github vllm-project/vllm-ascend x"})) is None


def test_a_served_run_is_predicted_and_its_batch_limit_bounds_it():
    case = _case(TRTLLM_ID)
    full, ignored = predict_serving(case)
    assert full > 0 and "mtp" in ignored
    half, _ = predict_serving(_with(case, batch_per_gpu=case.params["batch_per_gpu"] // 2))
    assert half < full          # fewer requests in flight per rank: fewer tokens per step
    node, _ = predict_serving(case.model_copy(update={"metric": "tokens_per_s_per_node"}))
    assert node == pytest.approx(full * 8)   # an 8-GPU HGX B200 node


def test_a_served_run_says_what_its_source_does_not_state():
    case = _case(TRTLLM_ID)
    with pytest.raises(Skip, match=r"input_len, output_len not stated by the source"):
        predict_serving(_with(case, input_len=None, output_len=None))
    with pytest.raises(Skip, match=r"engine and its scheduler are not known"):
        predict_serving(case.model_copy(update={"source": "a blog post"}))
    with pytest.raises(Skip, match=r"batch_per_gpu, input_len, output_len, parallel.ep not stated"):
        predict_serving(_case("mlperf41-mixtral-8x7b-dgx-h100x8-server"))
    with pytest.raises(Skip, match=r"unknown serving phase 'both'"):
        predict_serving(_with(case, phase="both"))
