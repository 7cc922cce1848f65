"""Planner: expansion, pruning before simulation, Pareto fronts, SLO diagnosis, cache/resume,
parallel determinism."""
from __future__ import annotations

from pathlib import Path

import pytest

from moesim.cluster.scenario import load_scenario
from moesim.core.errors import MoesimError
from moesim.core.loader import data_root, parse_record
from moesim.planning import planner
from moesim.planning import space as search_space
from moesim.planning import sweep

EXAMPLE = data_root() / "workloads" / "spaces" / "example-dsv3-decode.yaml"


def space(**kw) -> search_space.Space:
    base = dict(models=["deepseek-v3"], systems=["dgx-h100"], gpus=[16], parallel=[{"tp": 1, "ep": "gpus"}],
                batch=[16], input_len=512, output_len=128, dtypes={"weights": "fp8", "kv_cache": "fp8"})
    base.update(kw)
    return parse_record(search_space.Space, base)


def test_expansion_counts_and_order():
    sp = space(systems=["dgx-h100", "hgx-h200"], gpus=[16, 32], batch=[8, 16, 32], overlap=["none", "two_batch"])
    points = search_space.expand(sp)
    assert len(points) == 2 * 2 * 3 * 2
    assert [p["id"] for p in points] == list(range(len(points)))
    assert points == search_space.expand(sp)  # deterministic
    assert points[0]["overrides"]["parallel.ep"] == 16 and points[-1]["overrides"]["parallel.ep"] == 32
    per_system = space(systems=[{"name": "dgx-h100", "gpus": [16, 32]}, {"name": "gb200-nvl72", "gpus": [72]}], gpus=[])
    assert [p["overrides"]["gpus"] for p in search_space.expand(per_system)] == [16, 32, 72]


def test_example_space_loads_and_is_small():
    sp = search_space.load_space(EXAMPLE)
    assert len(search_space.expand(sp)) <= 8


def test_all_enumeration_yields_only_valid_splits():
    sp = space(models=["mixtral-8x7b"], gpus=[8], parallel="all", dtypes={"weights": "bf16", "kv_cache": "bf16"})
    points = search_space.expand(sp)
    splits = {(p["overrides"]["parallel.tp"], p["overrides"]["parallel.ep"]) for p in points}
    assert (1, 8) in splits and (8, 1) in splits and len(splits) == len(points)
    for p in points:
        o = p["overrides"]
        assert o["parallel.tp"] in (1, 2, 4, 8) and o["parallel.pp"] == 1
        assert o["parallel.dp"] * o["parallel.tp"] == o["gpus"]
        load_scenario(None, o)  # raises if the split is invalid
    # DeepSeek-V3 on 72 GPUs: 256 experts allow no EP beyond 8 that also divides 72
    eps = {p["overrides"]["parallel.ep"] for p in search_space.expand(space(gpus=[72], parallel="all", batch=[1]))}
    assert eps and max(eps) == 8


def test_empty_space_names_the_field():
    with pytest.raises(MoesimError) as err:
        search_space.expand(space(batch=[]))
    assert err.value.field == "batch"
    with pytest.raises(MoesimError) as err:
        search_space.expand(space(systems=["dgx-h100"], gpus=[]))
    assert err.value.field == "gpus"


def test_unknown_space_field_is_rejected():
    with pytest.raises(MoesimError) as err:
        space(batches=[1])
    assert "batches" in str(err.value)


def test_prune_removes_unfit_and_invalid_with_reasons():
    sp = space(gpus=[8, 16], parallel=[{"tp": 1, "ep": 8}], dtypes={"weights": "bf16", "kv_cache": "bf16"},
               redundant_experts=[0, 3])
    points = search_space.expand(sp)
    kept, pruned, reasons = sweep.prune(points)
    assert pruned == len(reasons) == len(points) - len(kept)
    by_id = {r["id"]: r["reason"] for r in reasons}
    # bf16 DeepSeek-V3 on 8 H100s does not fit
    assert "does not fit in VRAM" in by_id[0]
    # 256 + 3 redundant experts do not divide over EP8: the split error, one line
    assert "parallel.ep" in by_id[1] and "\n" not in by_id[1]
    assert all(p["key"] for p in kept)


def test_pareto_front_on_synthetic_points():
    pts = [{"t": 10, "l": 5}, {"t": 8, "l": 3}, {"t": 10, "l": 6}, {"t": 5, "l": 3}, {"t": 12, "l": 9},
           {"t": 7, "l": 7}, {"t": 12, "l": 9}, {"t": None, "l": 1}]
    axes = [("t", "max"), ("l", "min")]
    front = planner.pareto_front(pts, axes)
    assert front == [0, 1, 4, 6]

    def dom(a, b):
        return a["t"] >= b["t"] and a["l"] <= b["l"] and (a["t"] > b["t"] or a["l"] < b["l"])
    valid = [i for i, p in enumerate(pts) if p["t"] is not None]
    for i in front:
        assert not any(dom(pts[j], pts[i]) for j in valid)
    for i in set(valid) - set(front):
        assert any(dom(pts[j], pts[i]) for j in front)


def _result(i, system, gpus, tps, tpot):
    return {"id": i, "label": f"p{i}", "overrides": {"workload": {"batch": 1}}, "simulate": {"overlap": "none", "skew": "uniform"},
            "result": {"model": "m", "system": system, "gpus": gpus, "parallel": {}, "phase": "decode",
                       "metrics": {"tokens_per_s_per_gpu": tps, "tpot_ms": tpot, "step_time_s": tpot / 1e3}}}


COSTS = search_space.CostTable(systems={"a": {"price_per_gpu_hour": 3.6, "source": "test"},
                                        "b": {"price_per_gpu_hour": 7.2, "source": "test", "placeholder": True}})


def test_summary_best_runners_up_cost_and_fronts():
    results = [_result(0, "a", 16, 1000, 20), _result(1, "b", 8, 1500, 30), _result(2, "a", 32, 800, 10),
               _result(3, "a", 16, 2000, 80)]
    slo = search_space.SLO(tpot_ms_max=50)
    out = planner.summarize(results, slo, "max_tokens_per_s_per_gpu", COSTS)
    assert out["feasible"] == [0, 1, 2]
    assert out["best"]["id"] == 1
    assert out["runners_up"][0]["id"] == 0 and out["runners_up"][0]["metric"] == "tokens_per_s_per_gpu"
    assert out["runners_up"][0]["by_pct"] == pytest.approx(100 * 500 / 1500)
    # cost = price / 3600 / tokens_per_s_per_gpu * 1e6
    assert out["points"][0]["cost_per_million_tokens"] == pytest.approx(3.6 / 3600 / 1000 * 1e6)
    assert out["points"][1]["cost_placeholder"] and out["costs_are_placeholders"]
    assert out["pareto"]["throughput_vs_latency"] == [0, 1, 2, 3]
    cheap = planner.summarize(results, slo, "min_cost_per_million_tokens", COSTS)
    assert cheap["best"]["id"] == 0  # 1.0 $/M vs 1.33 for b and 1.25 for p2
    assert planner.summarize(results, slo, "min_gpus", COSTS)["best"]["id"] == 1
    with pytest.raises(MoesimError, match="no price"):
        planner.summarize(results + [_result(4, "zzz", 8, 1, 1)], slo, "min_cost_per_million_tokens", COSTS)


def test_no_feasible_point_names_binding_constraint():
    results = [_result(0, "a", 16, 1000, 60), _result(1, "a", 16, 500, 40), _result(2, "a", 16, 800, 55)]
    slo = search_space.SLO(tpot_ms_max=30, min_tokens_per_s_per_gpu=900)
    out = planner.summarize(results, slo, "max_tokens_per_s_per_gpu", COSTS)
    assert out["best"] is None and out["feasible"] == []
    bind = out["binding_constraint"]
    assert bind["constraint"] == "tpot_ms_max" and bind["violated_by"] == 3
    assert bind["closest_miss"]["id"] == 1 and bind["relax_to"] == 40
    assert "tpot_ms_max" in bind["text"]


def _counting(monkeypatch):
    calls = []
    real = sweep.simulate

    def counted(sc, **kw):
        calls.append(sc.input.workload.batch)
        return real(sc, **kw)
    monkeypatch.setattr(sweep, "simulate", counted)
    return calls


def test_cache_skips_finished_points_and_resumes(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    kept, _, _ = sweep.prune(search_space.expand(space(batch=[4, 8, 16])))
    first = sweep.run(kept, cache_dir=tmp_path)
    assert len(calls) == 3 and not any(r["cached"] for r in first)
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 3
    second = sweep.run(kept, cache_dir=tmp_path)
    assert len(calls) == 3 and all(r["cached"] for r in second)
    assert [r["result"]["metrics"] for r in second] == [r["result"]["metrics"] for r in first]
    (tmp_path / f"{kept[1]['key']}.json").unlink()
    third = sweep.run(kept, cache_dir=tmp_path)
    assert calls == [4, 8, 16, 8]
    assert [r["cached"] for r in third] == [True, False, True]
    assert not list(tmp_path.glob(".*.tmp"))


def test_workers_give_same_results():
    kept, _, _ = sweep.prune(search_space.expand(space(batch=[4, 8, 16])))
    one = sweep.run(kept, workers=1)
    two = sweep.run(kept, workers=2)
    assert [r["id"] for r in two] == [r["id"] for r in one]
    assert [r["result"]["metrics"] for r in two] == [r["result"]["metrics"] for r in one]
    assert [r["result"]["breakdown"] for r in two] == [r["result"]["breakdown"] for r in one]


def test_example_plan_end_to_end(tmp_path):
    sp = search_space.load_space(EXAMPLE)
    out = planner.plan(sp, cache_dir=tmp_path)
    assert out["expanded"] == 8 and out["pruned"] == 3 and out["pruned"] + len(out["points"]) == 8
    assert out["best"] is not None and out["best"]["feasible"]
    again = planner.plan(sp, cache_dir=tmp_path)
    assert again["simulated"] == 0 and again["from_cache"] == len(out["points"])


def test_cli_plan_example_space(tmp_path):
    import json as _json

    from click.testing import CliRunner

    from moesim.cli import main
    out = tmp_path / "plan.json"
    space = Path(__file__).resolve().parents[1] / "workloads" / "spaces" / "example-dsv3-decode.yaml"
    result = CliRunner().invoke(main, ["plan", str(space), "-o", str(out), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "best (" in result.output and "pruned:" in result.output
    data = _json.loads(out.read_text())
    assert data["best"] is not None and data["pruned"] >= 1
    again = CliRunner().invoke(main, ["plan", str(space), "--cache", str(tmp_path / "cache")])
    assert "0 simulated" in again.output


def test_bench_planner_json_contract():
    import json as _json

    from click.testing import CliRunner

    from moesim.cli import main
    result = CliRunner().invoke(main, ["bench", "planner", "--json"])
    assert result.exit_code == 0, result.output
    p = _json.loads(result.output)["planner"]
    for key in ("configs_per_min_1_worker", "configs_per_min_2_workers", "prune_ms_per_config"):
        assert p[key] > 0


def test_splits_the_engine_cannot_simulate_are_pruned_with_a_reason():
    from moesim.planning.sweep import prune
    point = {"id": 0, "overrides": {"model": "qwen3-30b-a3b", "system": "dgx-h100", "gpus": 8,
                                    "parallel.tp": 4, "parallel.ep": 2, "dtypes.weights": "bf16",
                                    "workload": {"kind": "serving", "phase": "decode", "batch": 8,
                                                 "input_len": 128, "output_len": 16}},
             "simulate": {"overlap": "none", "skew": "uniform"}}
    kept, pruned, reasons = prune([point])
    assert not kept and pruned == 1 and "TP groups" in reasons[0]["reason"]


SPACE = Path(__file__).resolve().parents[1] / "workloads" / "spaces" / "example-dsv3-decode.yaml"


def test_dask_local_cluster_gives_the_local_results(tmp_path):
    distributed = pytest.importorskip("distributed")
    from moesim.planning.planner import plan
    from moesim.planning.space import load_space
    space = load_space(SPACE)
    local = plan(space, workers=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        remote = plan(space, dask=cluster.scheduler_address, cache_dir=tmp_path / "cache")
    assert [p["tokens_per_s_per_gpu"] for p in remote["points"]] == \
        [p["tokens_per_s_per_gpu"] for p in local["points"]]
    assert remote["simulated"] == local["simulated"]


def test_unreachable_dask_scheduler_is_one_line_error_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from moesim.cli import main
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", str(SPACE), "--dask", "tcp://127.0.0.1:9", "-o", str(out)])
    assert result.exit_code == 2 and "--dask" in result.stderr and not out.exists()


def test_a_killed_sweep_resumes_without_losing_finished_points(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "moesim", "plan", str(SPACE), "--cache", str(cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("*.json"))) < 1:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.read_bytes() for p in cache.glob("*.json")}
    assert finished, "no point finished before the kill"
    for entry in finished.values():  # atomic writes: every cache file that exists is complete JSON
        import json as _json
        _json.loads(entry)
    from moesim.planning.planner import plan
    from moesim.planning.space import load_space
    result = plan(load_space(SPACE), cache_dir=cache)
    assert result["from_cache"] >= len(finished)
    assert result["simulated"] + result["from_cache"] == result["expanded"] - result["pruned"]
    for name, content in finished.items():  # finished points were reused, not rewritten
        assert (cache / name).read_bytes() == content


def test_plan_set_changes_every_point_and_stays_resumable(tmp_path):
    from moesim.core.errors import MoesimError
    from moesim.planning.planner import plan
    from moesim.planning.space import load_space
    space = load_space(SPACE)
    cache = tmp_path / "cache"
    first = plan(space, cache_dir=cache, sets=["system.nic_Gbps=800", "skew=zipf:1.2"])
    assert all("zipf:1.2" in p["label"] and ".yaml" not in p["label"] for p in first["points"])
    again = plan(space, cache_dir=cache, sets=["system.nic_Gbps=800", "skew=zipf:1.2"])
    assert again["simulated"] == 0
    with pytest.raises(MoesimError) as err:
        plan(space, sets=["bogus.path=3"])
    assert err.value.field == "--set bogus.path"


# ----------------------------------------------------------------------------- reliability
def _write_space(path: Path, **kw) -> Path:
    import yaml
    data = dict(name="t", models=["deepseek-v3"], systems=[{"name": "dgx-h100", "gpus": [16]}],
                parallel=[{"tp": 1, "ep": "gpus"}], batch=[16], input_len=512, output_len=128,
                dtypes={"weights": "fp8", "kv_cache": "fp8"})
    data.update(kw)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _copy_data_root(target: Path) -> Path:
    import shutil
    for folder in ("topologies", "workloads"):
        shutil.copytree(data_root() / folder, target / folder)
    return target


def test_cache_is_keyed_by_the_code_and_data_that_computed_it(tmp_path, monkeypatch):
    """A cached point is served only to the code and data that computed it: a changed data file
    (a copied data root via MOESIM_DATA) or a changed code digest recomputes every point."""
    from moesim.core import digest
    cache = tmp_path / "cache"
    original = digest.code_and_data_digest()
    sp = space(batch=[4, 8])
    first = planner.plan(sp, cache_dir=cache)
    assert first["simulated"] == 2 and first["from_cache"] == 0
    assert first["provenance"]["code"]["code_and_data"] == original
    again = planner.plan(sp, cache_dir=cache)
    assert again["simulated"] == 0 and again["from_cache"] == 2
    # a copied data root (MOESIM_DATA): computed once, then served from the cache ...
    root = _copy_data_root(tmp_path / "data")
    monkeypatch.setenv("MOESIM_DATA", str(root))
    assert digest.code_and_data_digest() == original  # the same files hash the same wherever they are
    planner.plan(sp, cache_dir=cache)
    assert planner.plan(sp, cache_dir=cache)["from_cache"] == 2
    # ... until one data file changes (a comment: the resolved scenario is the same): nothing is served
    gpu = root / "topologies" / "gpus" / "h100-sxm.yaml"
    gpu.write_text(gpu.read_text() + "\n# edited\n")
    digest._digest.cache_clear()  # computed once per process: a rerun is a new process
    assert digest.code_and_data_digest() != original
    changed = planner.plan(sp, cache_dir=cache)
    assert changed["from_cache"] == 0 and changed["simulated"] == 2
    monkeypatch.delenv("MOESIM_DATA")
    # changed code (the digest of the sources): nothing is served from the cache
    monkeypatch.setattr(sweep, "code_and_data_digest", lambda: "0" * 64)
    recomputed = planner.plan(sp, cache_dir=cache)
    assert recomputed["from_cache"] == 0 and recomputed["simulated"] == 2
    assert [p["tokens_per_s_per_gpu"] for p in recomputed["points"]] == \
        [p["tokens_per_s_per_gpu"] for p in first["points"]]


def test_code_and_data_digest_covers_sources_and_data():
    from moesim.core import digest
    value = digest.code_and_data_digest()
    assert len(value) == 64 and value == digest.code_and_data_digest()
    names = [name for name, _ in digest._files(Path(digest.__file__).resolve().parents[1], data_root())]
    assert names == sorted(names)
    assert "moesim/planning/sweep.py" in names and "moesim/core/digest.py" in names
    assert any(n.startswith("topologies/systems/") for n in names)
    assert any(n.startswith("workloads/models/") for n in names)
    assert not any(n.endswith(".pyc") for n in names)


@pytest.mark.parametrize("content", ["[]", "{}", '{"result": 3}', '"text"', "null", '{"result": {}}',
                                     '{"result": {"metrics": []}}', '{"key": "other", "result": null}'])
def test_cache_entry_of_the_wrong_shape_is_recomputed(tmp_path, content):
    kept, _, _ = sweep.prune(search_space.expand(space(batch=[4])))
    path = tmp_path / f"{kept[0]['key']}.json"
    path.write_text(content)
    out = sweep.run(kept, cache_dir=tmp_path)
    assert [r["cached"] for r in out] == [False]
    assert out[0]["result"]["metrics"]["tokens_per_s_per_gpu"] > 0
    import json as _json
    entry = _json.loads(path.read_text())  # overwritten with a good entry
    assert entry["key"] == kept[0]["key"] and entry["result"] == out[0]["result"]
    assert sweep.run(kept, cache_dir=tmp_path)[0]["cached"]


def test_cache_entry_of_another_key_is_recomputed(tmp_path):
    import json as _json
    a, b = sweep.prune(search_space.expand(space(batch=[4, 8])))[0]
    sweep.run([a], cache_dir=tmp_path)
    (tmp_path / f"{b['key']}.json").write_text((tmp_path / f"{a['key']}.json").read_text())
    out = sweep.run([b], cache_dir=tmp_path)
    assert not out[0]["cached"]
    assert _json.loads((tmp_path / f"{b['key']}.json").read_text())["key"] == b["key"]


@pytest.mark.parametrize("field, change, expected", [
    ("models.0", {"models": ["deepsek-v3"]}, "deepseek-v3"),
    ("systems.0.name", {"systems": [{"name": "dgx-h10", "gpus": [16]}]}, "dgx-h100"),
    ("systems.1", {"systems": ["dgx-h100", "nope-system"], "gpus": [16]}, "dgx-h100"),
    ("dtypes.weights", {"dtypes": {"weights": "fp9", "kv_cache": "fp8"}}, "fp8"),
    ("dtypes.kv_cache", {"dtypes": {"weights": "fp8", "kv_cache": "int3"}}, "bf16"),
    ("skew.1", {"skew": ["uniform", "zipff:1.2"]}, "zipf"),
    ("costs", {"costs": "no-such-costs.yaml"}, "costs"),
])
def test_space_names_that_do_not_resolve_are_errors_at_load(tmp_path, field, change, expected):
    from click.testing import CliRunner

    from moesim.cli import main
    path = _write_space(tmp_path / "space.yaml", **change)
    with pytest.raises(MoesimError) as err:
        search_space.load_space(path)
    assert err.value.field == field and expected in err.value.one_line()
    assert err.value.file == str(path)
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", str(path), "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], result.stderr
    assert "Traceback" not in result.output and not out.exists()


def test_space_with_unpriced_system_and_cost_objective_is_an_error_at_load(tmp_path):
    costs = tmp_path / "costs.yaml"
    costs.write_text("systems:\n  dgx-h100: {price_per_gpu_hour: 2.0, source: test}\n")
    path = _write_space(tmp_path / "space.yaml", systems=[{"name": "dgx-h100", "gpus": [16]},
                                                          {"name": "hgx-h200", "gpus": [16]}],
                        objective="min_cost_per_million_tokens", costs=str(costs))
    with pytest.raises(MoesimError) as err:
        search_space.load_space(path)
    assert err.value.field == "systems.1.name" and "hgx-h200" in err.value.problem
    ok = _write_space(tmp_path / "ok.yaml", costs=str(costs), objective="min_cost_per_million_tokens")
    assert search_space.load_space(ok).costs == str(costs)


def _no_repr(text: str) -> None:
    assert "{" not in text and "}" not in text and "[" not in text and "None" not in text, text


def test_plan_table_when_nothing_is_feasible_is_sentences_not_a_dict():
    from moesim.present.tables import plan_table
    results = [_result(0, "a", 16, 1000, 60), _result(1, "a", 16, 500, 40), _result(2, "a", 16, 800, 55)]
    out = planner.summarize(results, search_space.SLO(tpot_ms_max=30, min_tokens_per_s_per_gpu=900),
                            "max_tokens_per_s_per_gpu", COSTS)
    out.update({"space": "s", "expanded": 3, "pruned": 0, "pruned_reasons": [], "simulated": 3, "from_cache": 0})
    text = plan_table(out)
    _no_repr(text)
    assert "no configuration meets the SLOs" in text and out["binding_constraint"]["text"] in text
    assert "min_tokens_per_s_per_gpu" in text  # the other bound is named too


def test_plan_where_every_point_is_pruned_says_so(tmp_path):
    from click.testing import CliRunner

    from moesim.cli import main
    path = _write_space(tmp_path / "space.yaml", systems=[{"name": "dgx-h100", "gpus": [8]}],
                        dtypes={"weights": "bf16", "kv_cache": "bf16"})
    result = CliRunner().invoke(main, ["plan", str(path)])
    assert result.exit_code == 0, result.output
    _no_repr(result.stdout)
    assert "no configuration was simulated" in result.stdout and "pruned" in result.stdout


def test_plan_table_names_the_latency_metric():
    from moesim.present.tables import plan_table
    decode = planner.summarize([_result(0, "a", 16, 1000, 20)], search_space.SLO(), "max_tokens_per_s_per_gpu",
                               COSTS)
    text = plan_table(decode)
    assert "TPOT ms" in text and "latency" not in text.lower()
    pre = _result(0, "a", 16, 1000, 20)
    pre["result"].update(phase="prefill", metrics={"tokens_per_s_per_gpu": 1000, "ttft_ms": 300, "step_time_s": 0.3})
    text = plan_table(planner.summarize([pre], search_space.SLO(), "max_tokens_per_s_per_gpu", COSTS))
    assert "TTFT ms" in text and "TPOT" not in text and "latency" not in text.lower()


@pytest.mark.parametrize("address", ["garbage", "tcp://", "http://x:y", "tcp://127.0.0.1:notaport", "ftp://h:1"])
def test_bad_dask_address_is_one_line_error_quickly(tmp_path, address):
    import time

    from click.testing import CliRunner

    from moesim.cli import main
    pytest.importorskip("distributed")
    out = tmp_path / "plan.json"
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["plan", str(SPACE), "--dask", address, "-o", str(out)])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--dask" in lines[0], result.stderr
    assert time.perf_counter() - start < 5 and not out.exists()


def _alive(pids):
    import psutil
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _kill_all(proc, workers: list[int]) -> None:
    import os
    import signal
    for pid in _alive(workers):
        os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _plan_with_two_workers(path):
    """Start `moesim plan PATH --workers 2` in its own session; return it and its pool workers' PIDs
    once both run and have taken work."""
    import signal
    import subprocess
    import sys
    import time
    psutil = pytest.importorskip("psutil")
    # Ctrl-C as a terminal delivers it: to a process whose SIGINT is not ignored. A suite run as a background job
    # of a non-interactive shell inherits SIGINT (and SIGQUIT) ignored, and so would `moesim plan` (Python then
    # installs no KeyboardInterrupt handler), which is the shell's doing, not the planner's.
    proc = subprocess.Popen([sys.executable, "-m", "moesim", "plan", str(path), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    workers: list[int] = []
    deadline = time.time() + 20
    while time.time() < deadline and proc.poll() is None:
        workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    if len(workers) < 2:
        proc.kill()
        proc.wait()
        raise AssertionError("the pool workers did not start")
    time.sleep(0.3)  # let them take work
    return proc, workers


def test_pool_workers_die_with_a_killed_parent(tmp_path):
    import os
    import signal
    import time
    path = _write_space(tmp_path / "busy.yaml", systems=[{"name": "dgx-h100", "gpus": [32]}],
                        batch=list(range(8, 136, 8)), overlap=["none", "two_batch"])
    proc, workers = _plan_with_two_workers(path)
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone, not its process group
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _alive(workers):
            time.sleep(0.1)
        assert not _alive(workers), "pool workers outlived their killed parent"
    finally:
        _kill_all(proc, workers)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_parent_signal_tears_the_pool_down(tmp_path, signum):
    import os
    import signal
    import time
    path = _write_space(tmp_path / "busy.yaml", systems=[{"name": "dgx-h100", "gpus": [32]}],
                        batch=list(range(8, 136, 8)), overlap=["none", "two_batch"], skew=["uniform", "zipf:1.0"])
    proc, workers = _plan_with_two_workers(path)
    try:
        start = time.time()
        os.kill(proc.pid, getattr(signal, signum))  # the parent alone
        proc.wait(timeout=10)
        assert time.time() - start < 5  # torn down, not left to finish the sweep
        deadline = time.time() + 5
        while time.time() < deadline and _alive(workers):
            time.sleep(0.1)
        assert not _alive(workers)
        assert b"Traceback" not in proc.stderr.read()
    finally:
        _kill_all(proc, workers)
