"""`moesim report`: simulate, plan and validate outputs turned into one readable document.

Each input JSON is recognised by its keys (a simulate Result, a disaggregated pair, a serve
Result, a plan, a validation run) and becomes a section: the inputs that reproduce it (model, system, split, seed,
code version), the assumptions that drive its numbers (calibration or spec rates, routing skew,
placement, memory budget, error-band basis), its headline table and its figures. No clock time
is written, so the same inputs give the same bytes. The HTML is one
self-contained file (figures as PNG data URIs, CSS inline, no script, nothing fetched) rendered
by a jinja2 template with autoescaping, so a model or scenario name can never inject markup.
The PDF holds the same text and figures, written by matplotlib's PdfPages: matplotlib already
draws every figure, so the PDF needs no second rendering engine (WeasyPrint would add cairo and
pango; printing through Chromium would need a browser at run time).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from moesim.core.errors import MoesimError
from moesim.core.loader import data_root
from moesim.core.output import write_atomic
from moesim.core.result import code_version
from moesim.present import plots
from moesim.present.tables import SLO_NAMES, band_lines, serve_lengths

FORMATS = (".html", ".pdf")
TEMPLATE = "report.html.j2"


@dataclass
class Figure:
    """A figure to draw: `build()` returns a matplotlib figure; caption and source are text."""

    title: str
    caption: str
    source: str
    build: Callable[[], Any]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    kind: str
    input_file: str
    inputs: list[tuple[str, str]]
    assumptions: list[str]
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading inputs
def detect(data: Any) -> Optional[str]:
    """Which moesim output this is: simulate, disaggregated, serve, plan or validate (None if none)."""
    if not isinstance(data, dict):
        return None
    if {"metrics", "load", "scheduler", "step_function"} <= data.keys():   # before "pools": a disagg serve has them
        return "serve"
    if {"metrics", "breakdown", "memory", "parallel"} <= data.keys():
        return "simulate"
    if "pools" in data and isinstance(data["pools"], dict) and {"prefill", "decode"} <= data["pools"].keys():
        return "disaggregated"
    if {"points", "pareto", "slo"} <= data.keys():
        return "plan"
    if {"cases", "mape"} <= data.keys():
        return "validate"
    return None


def read_input(path: str | Path) -> tuple[str, dict]:
    """(kind, data) of one input file, or a one-line error naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise MoesimError(f"cannot read {p}: {exc.strerror or exc}", field="INPUT",
                          fix="give a JSON file written by moesim simulate/plan/validate --json") from None
    except UnicodeDecodeError as exc:
        raise MoesimError(f"{p}: not a UTF-8 text file (byte {exc.start} cannot be decoded)", field="INPUT",
                          fix="give a JSON file written by moesim simulate/plan/validate --json") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MoesimError(f"{p}:{exc.lineno}: not JSON ({exc.msg})", field="INPUT",
                          fix="give the output of moesim simulate --json, moesim plan -o, or moesim validate --json"
                          ) from None
    kind = detect(data)
    if kind is None:
        raise MoesimError(f"{p}: not a moesim simulate, plan or validate output", field="INPUT",
                          fix="give the output of moesim simulate --json, moesim plan -o, or moesim validate --json")
    return kind, data


# ----------------------------------------------------------------------------- text helpers
def _code(prov: Optional[dict]) -> str:
    code = (prov or {}).get("code") or {}
    if not code:
        return "not recorded in this input (written by an older moesim)"
    commit = code.get("commit")
    text = f"moesim {code.get('moesim', '?')}"
    text += f", commit {commit[:12]}" if commit else ", no git commit (installed package)"
    if code.get("uncommitted_changes"):
        text += " with uncommitted changes"
    return text


def _split(parallel: dict) -> str:
    return " ".join(f"{k.upper()}{v}" for k, v in parallel.items())


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.3f} ms"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


METRIC_UNITS = {"step_time_s": ("step time", lambda v: _ms(v)), "tpot_ms": ("TPOT", lambda v: f"{v:,.2f} ms"),
                "ttft_ms": ("TTFT", lambda v: f"{v:,.2f} ms"),
                "tokens_per_s_per_gpu": ("tokens/s per GPU", lambda v: f"{v:,.0f}"),
                "tokens_per_s_per_node": ("tokens/s per node", lambda v: f"{v:,.0f}"),
                "tflops_per_gpu": ("TFLOP/s per GPU", lambda v: f"{v:,.1f}"), "mfu": ("MFU", lambda v: f"{100 * v:.1f} %"),
                "pipeline_bubble_fraction": ("pipeline bubble", lambda v: f"{100 * v:.1f} %")}


def _fleet(data: dict) -> str:
    """The result's GPUs as `16 × H100 (2 DGX H100 nodes of 8 GPUs)`; older results: `16 x dgx-h100`."""
    return data.get("fleet") or f"{data['gpus']} x {data['system']}"


# ----------------------------------------------------------------------------- sections
def simulate_section(data: dict, input_file: str, title: Optional[str] = None) -> Section:
    sim, prov = data.get("simulation", {}), data.get("provenance") or {}
    training = data["phase"] == "training"
    inputs = [("scenario", data.get("scenario", "?")), ("model", data["model"]),
              ("system", f"{data['system']}: {_fleet(data)}"), ("parallel split", _split(data["parallel"])),
              ("phase", data["phase"]), ("overlap", data.get("overlap", "none")), ("seed", str(data.get("seed"))),
              ("code version", _code(prov)), ("input file", input_file)]
    assumptions = [f"WARNING: {w}." for w in data.get("warnings", [])]
    assumptions += [f"Rates: {prov.get('rates') or 'not recorded in this input'}."]
    if not training:
        assumptions += [f"Routing skew: {sim.get('skew', '?')}; expert placement: {sim.get('placement', '?')}; "
                        f"dispatch in {sim.get('dispatch_dtype', '?')}; {sim.get('tokens_per_rank_per_microbatch', '?')} "
                        "tokens per rank per micro-batch.",
                        "Every MoE layer's routing is sampled (seeded) per layer; the step runs all layers on the "
                        "SimPy engine, one compute and one communication stream per GPU."]
        assumptions += [f"Network: {note}" for note in sim.get("efficiency_notes", [])]
    else:
        assumptions += [f"{sim.get('microbatches', '?')} micro-batches, 1F1B pipeline; FLOPs counted as "
                        f"{sim.get('flop_convention', '?')}."]
    mem = data["memory"]
    if mem.get("memory_fraction") is not None:
        assumptions.append(f"Memory budget: {mem['memory_fraction']:g} of HBM capacity (framework setting).")
    bands = data.get("uncertainty", {})
    rests = sorted({b.get("rests_on") for b in bands.values() if b.get("rests_on")})
    assumptions += [f"Error bands: bias-corrected centre value x exp(mean log measured/predicted ratio) and a 95% "
                    f"prediction interval (Student's t) of that ratio; they rest on {r}." for r in rests]

    rows = []
    for key, value in data["metrics"].items():
        label, fmt = METRIC_UNITS.get(key, (key, _num))
        if key == "tokens_per_s_per_node" and data.get("node"):
            label = f"tokens/s per {data['node']['name']}"
        band = bands.get(key)
        known = band and band.get("centre") is not None
        rows.append([label, fmt(value), fmt(band["centre"]) if known else "—",
                     f"{fmt(band['low'])} – {fmt(band['high'])}" if known else "—"])
    tables = [Table("Headline metrics", ["metric", "simulated", "bias-corrected", "95% band"], rows)]
    per_gpu = mem["per_gpu"]
    tables.append(Table("Memory per GPU", ["part", "GiB"],
                        [[label, f"{per_gpu.get(key, 0) / plots.GiB:,.2f}"] for key, label in plots.MEMORY_PARTS
                         if per_gpu.get(key)] +
                        [["total", f"{per_gpu['total_bytes'] / plots.GiB:,.2f}"],
                         ["capacity", f"{per_gpu['capacity_bytes'] / plots.GiB:,.2f}"],
                         ["fits", "yes" if mem.get("fits") else "NO"]]))

    details = data.get("details") or {}
    figures: list[Figure] = []
    critical = sim.get("critical_gpu")
    if details.get("timeline", {}).get("spans"):
        tl = details["timeline"]
        what = f"MoE layer {tl['layer']}" if tl.get("layer", -1) >= 0 else "the training step's pipeline"
        figures.append(Figure(
            "Per-GPU timeline", f"Compute and communication streams of every GPU through {what}.",
            "details.timeline: spans recorded by the SimPy engine (moesim.sim.engine.run_step / run_pipeline).",
            lambda tl=tl: plots.timeline_figure(tl, critical=critical)))
    figures.append(Figure(
        "Time per op class", "Where the step's time goes on the critical GPU (the one the others wait for).",
        "breakdown: engine spans of the critical GPU, split by op class; exposed = not under compute.",
        lambda: plots.breakdown_figure(data["breakdown"], step_s=data["metrics"].get("step_time_s"))))
    if details.get("expert_load"):
        figures.append(Figure(
            "Expert load per layer", "Tokens routed to each expert, per MoE layer, relative to the layer mean.",
            f"details.expert_load: the seeded routing sample (moesim.costs.routing, skew {sim.get('skew', '?')}).",
            lambda: plots.expert_heatmap_figure(details["expert_load"], details["moe_layers"])))
    if details.get("gpu_load"):
        figures.append(Figure(
            "Per-GPU expert load", "Routed tokens each GPU computes over the step, and the imbalance ratio.",
            f"details.gpu_load: routing sample mapped through the {sim.get('placement', '?')} placement "
            "(moesim.costs.placement).",
            lambda: plots.gpu_load_figure(details["gpu_load"])))
    if details.get("dispatch_bytes"):
        figures.append(Figure(
            "Dispatch traffic matrix", "Bytes each GPU sends to each other GPU in the first MoE layer's dispatch.",
            "details.dispatch_bytes: moesim.costs.traffic from the routing sample and placement; lines mark nodes.",
            lambda: plots.traffic_figure(details["dispatch_bytes"], layer=details.get("traffic_layer", 0),
                                         gpus_per_node=details.get("gpus_per_node"))))
    figures.append(Figure(
        "VRAM per GPU", "Memory per GPU by what holds it, against HBM capacity and the framework budget.",
        "memory: moesim.costs.memory ledger (weights from the model config, KV from the workload, buffers, reserve).",
        lambda: plots.vram_figure(mem)))
    return Section(title or f"Simulation: {data['model']} on {_fleet(data)} ({data['phase']})",
                   "simulate", input_file, inputs, assumptions, tables, figures)


def _violations(violations: Any) -> str:
    if isinstance(violations, dict):
        return "; ".join(f"{k} {v}" for k, v in violations.items()) or "?"
    if isinstance(violations, list):
        return "; ".join(map(str, violations)) or "?"
    return str(violations)


def plan_section(data: dict, input_file: str) -> Section:
    points = data["points"]
    slo = ", ".join(f"{k} = {v}" for k, v in data.get("slo", {}).items()) or "none"
    inputs = [("search space", str(data.get("space", "?"))), ("objective", str(data.get("objective"))),
              ("SLO", slo), ("models", ", ".join(sorted({p["model"] for p in points})) or "—"),
              ("systems", ", ".join(sorted({f"{p['gpus']} GPUs of {p['system']}" for p in points})) or "—"),
              ("configurations", f"{data.get('expanded', len(points))} expanded, {data.get('pruned', 0)} pruned, "
                                 f"{data.get('simulated', 0)} simulated, {data.get('from_cache', 0)} from cache"),
              ("seed", "each point's scenario seed (default 0)"),
              ("code version", _code(data.get("provenance"))), ("input file", input_file)]
    assumptions = [f"Routing skew per point: {', '.join(sorted({str(p.get('skew')) for p in points}))}; overlap: "
                   f"{', '.join(sorted({str(p.get('overlap')) for p in points}))}.",
                   f"{data.get('pruned', 0)} points that cannot fit in VRAM or whose split does not divide were "
                   "pruned before simulation (table below)."]
    if data.get("costs_are_placeholders"):
        assumptions.append("GPU prices are placeholders from workloads/costs.yaml: cost rankings are illustrative.")
    if data.get("binding_constraint"):
        binding = data["binding_constraint"]
        assumptions.append("No point meets the SLO; binding constraint: "
                           + (binding.get("text") or json.dumps(binding) if isinstance(binding, dict) else str(binding))
                           + ".")
    ordered = sorted(points, key=lambda p: (not p["feasible"], -p["tokens_per_s_per_gpu"]))
    rows = [[p["label"], p["system"], str(p["gpus"]), _split(p["parallel"]), f"{p['tokens_per_s_per_gpu']:,.0f}",
             f"{p['latency_ms']:,.2f}", "yes" if p["feasible"] else "no: " + _violations(p.get("violations")),
             "-" if p.get("cost_per_million_tokens") is None else f"{p['cost_per_million_tokens']:,.3f}"]
            for p in ordered]
    tables = [Table("Configurations (SLO-feasible first, then by throughput)",
                    ["configuration", "system", "GPUs", "split", "tokens/s/GPU",
                     f"{(points[0]['latency_metric'] if points else 'latency_ms').removesuffix('_ms').upper()} (ms)", "meets SLO", "$ / M tokens"], rows)]
    pruned = data.get("pruned_reasons") or []
    if pruned:
        tables.append(Table("Pruned before simulation", ["configuration", "reason"],
                            [[str(r.get("label", r.get("id"))), str(r.get("reason"))] for r in pruned]))
    if data.get("best"):
        best = data["best"]
        assumptions += [f"Best configuration's {line}." for line in band_lines(best.get("uncertainty") or {})]
        lost = [[r["label"], r["text"]] for r in data.get("runners_up", [])]
        tables.append(Table(f"Best: {best['label']}", ["runner-up", "why it lost"], lost))
    figures = [Figure("Pareto front", "Throughput per GPU against latency for every simulated configuration, "
                      "with the SLO limit and the throughput-latency Pareto front.",
                      "points, pareto.throughput_vs_latency, slo and best of the plan (moesim.planning.planner).",
                      lambda: plots.pareto_figure(data))] if points else []
    if any(p.get("tokens_per_s_per_user") is not None for p in points):   # a space under load: served points
        figures.append(Figure("Throughput-interactivity front", "Output tokens/s per GPU against output tokens/s per "
                              "user for every served configuration (filled: meets the SLOs), each system's Pareto "
                              "points joined, the best ringed.",
                              "points[].tokens_per_s_per_gpu and tokens_per_s_per_user (moesim serve under the "
                              "space's load), fronts_by_system, slo and best of the plan (moesim.planning.planner).",
                              lambda: plots.front_figure(data)))
    return Section(f"Plan: {data.get('space', '?')}", "plan", input_file, inputs, assumptions, tables, figures)


def validate_section(data: dict, input_file: str) -> Section:
    prov = data.get("provenance") or {}
    cases = data["cases"]
    inputs = [("cases predicted", str(len(cases))), ("cases skipped", str(len(data.get("skipped", [])))),
              ("cases relabelled (stated split contradicts the run name)", str(len(data.get("relabelled", [])))),
              ("overall MAPE", f"{100 * data['mape'].get('overall', 0):.1f} %"),
              ("calibration profile", str(prov.get("profile") or "none (spec rates)")),
              ("code version", _code(prov)), ("input file", input_file)]
    assumptions = ["Every prediction comes from specs, models and (with a profile) a calibration; no measured "
                   "figure of a case is used to predict it.",
                   "MAPE = mean |predicted - measured| / measured over the cases of a kind."]
    mape_rows = [[what, str(sum(c["what"] == what for c in cases)), f"{100 * v:.1f} %"]
                 for what, v in data["mape"].items() if what != "overall"]
    worst = sorted(cases, key=lambda c: -abs(c["rel_error"]))[:15]
    tables = [Table("MAPE per kind", ["what", "cases", "MAPE"], mape_rows),
              Table("Largest errors", ["case", "what", "measured", "predicted", "error"],
                    [[c["id"], c["what"], _num(c["measured"]), _num(c["predicted"]), f"{100 * c['rel_error']:+.1f} %"]
                     for c in worst])]
    if data.get("repeatability"):
        tables.append(Table("Repeated measurements: the floor under any model's error (validation.repeatability)",
                            ["metric", "benchmarks", "values", "MAPE floor", "moesim MAPE", "largest max/min"],
                            [[kind, str(r["benchmarks"]), str(r["values"]), f"{100 * r['mape_floor']:.1f} %",
                              "-" if r.get("model_mape") is None else f"{100 * r['model_mape']:.1f} %",
                              f"{r['max_max_over_min']:.2f}"] for kind, r in data["repeatability"].items()]))
    figures = [Figure("Validation parity", "Predicted against measured for every case, one marker per kind, "
                      "with the y = x line and a +-15 % band.",
                      "cases[].measured (published, with sources in the cases file) and cases[].predicted "
                      "(moesim.validation.run).", lambda: plots.parity_figure(data))] if cases else []
    if plots.has_serving_load(data):
        figures.append(Figure("Serving benchmarks: TTFT and TPOT", "Predicted against measured mean TTFT and TPOT of "
                              "the closed-loop serving benchmarks, one colour per system, with the y = x line and a "
                              "+-15 % band.", "cases[] of what serving_load: measured, predicted, labels.system "
                              "(moesim.validation.serving_load).", lambda: plots.serving_parity_figure(data)))
        tables.insert(1, Table("Serving benchmarks: MAPE and bias per metric and group",
                               ["metric", "group", "name", "cases", "MAPE", "bias"], _serving_group_rows(data)))
    return Section("Validation against published measurements", "validate", input_file, inputs, assumptions,
                   tables, figures)


def _serving_group_rows(data: dict) -> list[list[str]]:
    """One row per metric and group of `groups` (validate's serving_load summary), left-out figures
    in brackets when the run cross-validated."""
    rows = []
    for metric, entry in (data.get("groups") or {}).items():
        for group, stats in [("overall", {"all": entry["overall"]})] + [(g, v) for g, v in entry.items()
                                                                         if g != "overall"]:
            for name, st in stats.items():
                cv = (f" ({100 * st['mape_cv']:.1f} % left out)" if "mape_cv" in st else "")
                cvb = (f" ({100 * st['bias_cv']:+.1f} %)" if "bias_cv" in st else "")
                rows.append([metric, group, name, str(st["cases"]), f"{100 * st['mape']:.1f} %{cv}",
                             f"{100 * st['bias']:+.1f} %{cvb}"])
    return rows


def _serve_load(load: dict) -> str:
    """The load in words: how requests arrive, their lengths, how many."""
    if load["mode"] == "closed":
        how = f"closed loop, concurrency {load['concurrency']} ({load.get('closed_loop_start', 'burst')} start)"
    elif load["mode"] == "open":
        how = f"open loop, Poisson arrivals at {load['rate_per_s']:g} requests/s"
    else:
        how = f"trace {load.get('arrivals', '?')}"
    return (f"{how}; {serve_lengths(load, 'input_lengths', 'isl')}, {serve_lengths(load, 'output_lengths', 'osl')}; "
            f"{load['requests']:,} measured requests after {load['warmup']:,} warm-up")


SERVE_ROWS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))


def serve_section(data: dict, input_file: str) -> Section:
    """A `moesim serve` Result: the deployment and load, the percentile table, throughput, goodput
    under SLOs, the latency distributions (from `latency_samples_ms`, which the serve command adds
    from its per-request arrays; a saved `--json` result has none, and the report says so), batch
    and KV over time, the scheduler's peaks and, disaggregated, the pools and KV transfers."""
    m, load, sched, prov = data["metrics"], data["load"], data["scheduler"], data.get("provenance") or {}
    pools = data.get("pools") or {}
    if data.get("mode") == "disagg" and pools:
        mode = "disaggregated: " + "; ".join(
            f"{name} {q['instances']} x {q['gpus'] // q['instances']} GPUs ({_split(q['split'])})"
            for name, q in pools.items())
    else:
        mode = (f"aggregated: {sched['instances']} engine instance(s) of {sched['ranks_per_instance']} "
                "attention-DP rank(s), each prefilling and decoding")
    policy = sched.get("policy") or {}
    inputs = [("scenario", str(data.get("scenario", "?"))), ("model", data["model"]),
              ("system", f"{data['system']}: {_fleet(data)}"), ("parallel split", _split(data["parallel"])),
              ("mode", mode), ("framework", f"{data.get('framework', '?')}; batching policy "
                                            + ", ".join(f"{k} {v}" for k, v in policy.items()
                                                       if k != "framework" and not isinstance(v, (list, dict)))),
              ("load", _serve_load(load)), ("seed", str(load.get("seed"))),
              ("code version", _code(prov)), ("input file", input_file)]
    goodput = m.get("goodput")
    assumptions = [f"Rates: {prov.get('rates') or 'not recorded in this input'}."]
    assumptions += [a[:1].upper() + a[1:] + "." for a in data.get("assumptions", [])]
    assumptions += ["Latencies as vLLM/SGLang bench_serving defines them: TTFT = first token - send time; TPOT = "
                    "(E2E - TTFT) / (OSL - 1) per request (one-token outputs have none); ITL = every gap between "
                    "tokens, pooled; percentiles by numpy's linear interpolation; warm-up requests left out.",
                    "Throughput over the duration from the first measured send to the last measured finish; "
                    "tokens/s per user = 1 / mean TPOT."]
    if goodput:
        assumptions.append("Goodput (DistServe, OSDI 2024; counted as vLLM bench_serving --goodput does): only the "
                           "requests whose own " + " and ".join(SLO_NAMES.get(k, k) for k in goodput["slo_ms"])
                           + " meet the SLOs count; a one-token output passes a TPOT SLO.")
    if (data.get("timeline") or {}).get("pool") == "decode":
        assumptions.append("Disaggregated: batch and KV over time are the decode pool's (running = decoding).")

    rows = [[name] + ([f"{m[key][q]:,.2f}" for q in ("mean", "p50", "p90", "p99")] if m.get(key) else ["-"] * 4)
            for key, name in SERVE_ROWS]
    tables = [Table("Latency percentiles (ms)", ["latency", "mean", "p50", "p90", "p99"], rows)]
    per_user = m.get("output_tokens_per_s_per_user")
    tables.append(Table("Throughput", ["metric", "value"], [
        ["output tokens/s per GPU", f"{m['output_tokens_per_s_per_gpu']:,.1f}"],
        ["output tokens/s per user", "-" if per_user is None else f"{per_user:,.1f}"],
        ["output tokens/s", f"{m['output_tokens_per_s']:,.1f}"], ["requests/s", f"{m['requests_per_s']:,.3f}"],
        ["GPUs", str(m["gpus"])], ["measured requests", f"{m['requests']:,}"],
        ["output tokens", f"{m['output_tokens']:,}"], ["duration", f"{m['duration_s']:,.3f} s"]]))
    bands = data.get("uncertainty") or {}
    if bands:
        tables.append(Table("How far to trust the means: measured / predicted on validated benchmarks of this "
                            "backend and mode", ["metric", "simulated mean", "band (ms)", "median (ms)", "rests on"],
                            [[SLO_NAMES.get(key, key), f"{m[key]['mean']:,.2f}",
                              "-" if b["low"] is None else f"{b['low']:,.2f} - {b['high']:,.2f}",
                              "-" if b["median"] is None else f"{b['median']:,.2f}", b["rests_on"]]
                             for key, b in bands.items()]))
    if goodput:
        slo = ", ".join(f"{SLO_NAMES.get(k, k)} <= {v:g} ms" for k, v in goodput["slo_ms"].items())
        tables.append(Table(f"Goodput under SLOs ({slo})", ["metric", "all requests", "requests meeting the SLOs"], [
            ["requests", f"{goodput['requests']:,}",
             f"{goodput['good_requests']:,} ({100 * goodput['fraction']:.1f} %)"],
            ["requests/s", f"{m['requests_per_s']:,.3f}", f"{goodput['requests_per_s']:,.3f}"],
            ["output tokens/s", f"{m['output_tokens_per_s']:,.1f}", f"{goodput['output_tokens_per_s']:,.1f}"],
            ["output tokens/s per GPU", f"{m['output_tokens_per_s_per_gpu']:,.1f}",
             f"{goodput['output_tokens_per_s_per_gpu']:,.1f}"]]))
    tables.append(Table("Scheduler", ["quantity", "value"], [
        ["KV capacity per rank (tokens)", f"{sched['kv_capacity_tokens_per_rank']:,}"],
        ["peak KV in use per rank (tokens)", f"{sched['peak_kv_tokens_per_rank']:,}"],
        ["peak KV reserved per rank (tokens)", f"{sched['peak_kv_reserved_tokens_per_rank']:,}"],
        ["peak running requests per rank", f"{sched['peak_running_per_rank']:,}"],
        ["engine steps", f"{sched['steps']:,}"]]))
    if pools:
        tables.append(Table("Pools", ["pool", "instances", "GPUs", "split", "busy", "peak KV per rank", "steps"],
                            [[name, str(q["instances"]), str(q["gpus"]), _split(q["split"]),
                              f"{100 * q['busy_fraction']:.0f} %",
                              f"{q['peak_kv_tokens_per_rank']:,} of {q['kv_capacity_tokens_per_rank']:,}",
                              f"{q['steps']:,}"] for name, q in pools.items()]))
    kv = data.get("kv_transfer")
    if kv:
        tables.append(Table("KV transfers prefill -> decode", ["quantity", "value"], [
            ["bytes per request", f"{kv['bytes_per_request'] / 1e6:,.2f} MB"],
            ["flows per request", str(kv["flows_per_request"])], ["links", "/".join(kv["first_pair_links"])]]
            + [[f"{label} ({q})", f"{kv[key][q]:,.3f} ms"] for key, label in
               (("transfer_ms", "transfer"), ("wait_for_decode_slot_ms", "wait for a decode slot"))
               if kv.get(key) for q in ("mean", "p90")]))

    figures = []
    samples = data.get("latency_samples_ms")
    if samples:
        slo = goodput["slo_ms"] if goodput else None
        figures.append(Figure(
            "Latency distributions", "Empirical CDF of TTFT, TPOT and end-to-end latency per measured request, with "
            "the run's p50, p90 and p99 marked" + (" and the SLOs with the share of requests within each" if slo
                                                   else "") + ".",
            "latency_samples_ms: per-request latencies of the serve run (moesim.serve.metrics.latency_samples_ms); "
            "percentiles from metrics.",
            lambda: plots.latency_cdf_figure(samples, m, slo=slo)))
    else:
        assumptions.append("This input has no per-request latencies (a saved --json result): the latency "
                           "distributions are drawn only by `moesim serve --report`.")
    timeline = data.get("timeline")
    if timeline and timeline.get("t_s"):
        figures.append(Figure(
            "Batch and KV over time", "Running and waiting requests, and KV cache tokens in use as a share of the "
            "capacity, summed over " + ("the decode pool's ranks" if timeline.get("pool") == "decode"
                                       else "every rank") + ", sampled at evenly spaced times.",
            "timeline: the scheduler's state after every engine step (moesim.serve.run.Timeline).",
            lambda: plots.serve_timeline_figure(timeline)))
    return Section(f"Serving under load: {data['model']} on {_fleet(data)} ({data.get('mode', 'agg')})", "serve",
                   input_file, inputs, assumptions, tables, figures)


def sections_for(kind: str, data: dict, input_file: str) -> list[Section]:
    if kind == "simulate":
        return [simulate_section(data, input_file)]
    if kind == "serve":
        return [serve_section(data, input_file)]
    if kind == "disaggregated":
        m = data["metrics"]
        out = [simulate_section(data["pools"][pool], input_file, f"Disaggregated {pool} pool: {data['pools'][pool]['model']}"
                                f" on {data['pools'][pool]['gpus']} x {data['pools'][pool]['system']}")
               for pool in ("prefill", "decode")]
        out[0].tables.insert(0, Table("Both pools", ["metric", "value"],
                                      [[k.replace("_", " "), _num(v)] for k, v in m.items()]))
        return out
    if kind == "plan":
        return [plan_section(data, input_file)]
    return [validate_section(data, input_file)]


# ----------------------------------------------------------------------------- writing
def _title(sections: list[Section]) -> str:
    return "moesim report: " + "; ".join(s.title for s in sections[:2]) + (" …" if len(sections) > 2 else "")


def render_html(sections: list[Section], *, title: str) -> str:
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_root() / "reports" / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    figures = []
    for s_index, section in enumerate(sections):
        for f_index, fig in enumerate(section.figures):
            png = plots.figure_bytes(fig.build(), "png")
            figures.append((s_index, f_index, "data:image/png;base64," + base64.b64encode(png).decode("ascii")))
    uris = {(s, f): uri for s, f, uri in figures}
    return env.get_template(TEMPLATE).render(title=title, sections=sections, uris=uris,
                                             code=_code({"code": code_version()}))


def _pdf_blocks(sections: list[Section]) -> list[tuple[str, list[str]]]:
    blocks = [("About this report", [f"written by {_code({'code': code_version()})} from the inputs below",
                                     "figures follow the text pages, one per page, in this order:"]
               + [f"  {i + 1}. {f.title}" for i, f in enumerate(fig for s in sections for fig in s.figures)])]
    for section in sections:
        blocks.append((section.title, [f"{k:<22} {v}" for k, v in section.inputs]))
        blocks.append(("Assumptions", [f"- {a}" for a in section.assumptions]))
        for table in section.tables:
            widths = [max(len(str(c)) for c in [col] + [r[i] for r in table.rows]) for i, col in enumerate(table.columns)]
            widths = [min(w, 40) for w in widths]
            fmt = lambda cells: "  ".join(str(c)[:w].ljust(w) for c, w in zip(cells, widths))  # noqa: E731
            blocks.append((table.title, [fmt(table.columns)] + [fmt(r) for r in table.rows]))
    return blocks


MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)  # what odd JSON raises here


def check_output(output: str) -> str:
    """The report's format from its suffix (checked before any work is done)."""
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise MoesimError(f"cannot write a report as {suffix or 'a file without suffix'!r}", field="--report/--output",
                          fix="name the report .html or .pdf")
    return suffix


def write_report(items: list[tuple[str, dict, str]], output: str) -> Path:
    """Write the report of (kind, data, input name) items (.html or .pdf) atomically."""
    suffix = check_output(output)
    sections: list[Section] = []
    for kind, data, name in items:
        try:
            sections += sections_for(kind, data, name)
        except MALFORMED as exc:
            raise MoesimError(f"{name}: a {kind} output without the expected field {exc}", field="INPUT",
                              fix="regenerate it with this moesim version") from None
    try:  # figures are drawn lazily, so a field of the wrong type may only show here
        return _write(sections, output, suffix)
    except MALFORMED as exc:
        names = ", ".join(name for _, _, name in items)
        raise MoesimError(f"{names}: a field the report draws is missing or of the wrong type ({type(exc).__name__}: "
                          f"{exc})", field="INPUT", fix="give outputs written by this moesim version, unedited") from None


def _write(sections: list[Section], output: str, suffix: str) -> Path:
    title = _title(sections)
    if suffix == ".html":
        return write_atomic(output, render_html(sections, title=title))
    figures = [(fig.build(), f"Figure: {fig.title}. {fig.caption} Source: {fig.source}")
               for section in sections for fig in section.figures]
    return plots.write_pdf(output, title=title, blocks=_pdf_blocks(sections), figures=figures)


def build_report(inputs: list[str], output: str) -> Path:
    """Read every input, then write the report: nothing is written when any input is bad."""
    check_output(output)
    if not inputs:
        raise MoesimError("no input given", field="INPUT", fix="give one or more JSON files from simulate/plan/validate")
    items = []
    for path in inputs:
        kind, data = read_input(path)
        items.append((kind, data, str(path)))
    return write_report(items, output)

