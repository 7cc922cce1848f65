"""Plain-text tables for the terminal: fixed columns, units in the header, same numbers as JSON."""
from __future__ import annotations

from typing import Iterable, Sequence

from moesim.core.units import GiB


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, align: str | None = None) -> str:
    """Render rows under headers; `align` is one 'l'/'r' per column (default: text left, numbers right)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and all(_numeric(r[i]) for r in rows) else "l" for i in range(len(headers)))

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return False


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:,.2f}"


def memory_table(ledger: dict, scenario_line: str) -> str:
    """The VRAM ledger of the fullest GPU as a table, then the verdict."""
    per = ledger["per_gpu"]
    total, cap = per["total_bytes"], per["capacity_bytes"]
    rows = []
    labels = [("weights_bytes", "weights"), ("kv_cache_bytes", "KV cache"),
              ("activations_bytes", "activations"), ("buffers_bytes", "comm buffers"),
              ("reserved_bytes", "reserved (CUDA ctx, graphs)"), ("gradients_bytes", "gradients"),
              ("optimizer_bytes", "optimizer states")]
    for key, label in labels:
        rows.append([label, gib(per[key]), f"{100 * per[key] / cap:.1f}%"])
    rows.append(["total", gib(total), f"{100 * total / cap:.1f}%"])
    out = [scenario_line, "",
           table(["part (per GPU)", "GiB", "of capacity"], rows, align="lrr"), "",
           f"capacity {gib(cap)} GiB; budget {gib(ledger['budget_bytes'])} GiB "
           f"(memory fraction {ledger['memory_fraction']:.2f}); pipeline stage {ledger['binding_stage']} is fullest",
           f"fits: {'yes' if ledger['fits'] else 'NO'}  headroom {gib(ledger['headroom_bytes'])} GiB"]
    if "max_kv_tokens_per_gpu" in ledger:
        out.append(f"max KV tokens per GPU: {ledger['max_kv_tokens_per_gpu']:,} "
                   f"({ledger['kv_bytes_per_token_per_gpu']:,.0f} B per token per GPU)")
    if "max_micro_batch" in ledger:
        out.append(f"max micro-batch that fits: {ledger['max_micro_batch']}")
    return "\n".join(out)


def route_table(s: dict) -> str:
    """Summary of `moesim route`: loads, imbalance, traffic per link class."""
    load = s["gpu_load"]
    totals = s["dispatch_totals"]
    head = (f"{s['scenario']}: {s['model']} MoE layer {s['moe_layer']}, EP {s['ep']} on {s['system']} "
            f"(NVLink domain {s['nvlink_domain_gpus']} GPUs), {s['tokens']:,} tokens, skew {s['skew']}, "
            f"placement {s['placement']} (+{s['redundant_experts']} redundant), seed {s['seed']}")
    expert = s["expert_load"]
    lines = [head, "",
             f"expert load: min {min(expert):,} / mean {sum(expert) / len(expert):,.1f} / max {max(expert):,} "
             f"token-expert pairs (max/mean {s['expert_imbalance']:.3f})",
             f"GPU load:    min {min(load):,.1f} / mean {sum(load) / len(load):,.1f} / max {max(load):,.1f} "
             f"(imbalance max/mean {s['imbalance']:.3f})",
             f"dropped token-expert pairs: {s['dropped_tokens']:,}",
             f"replica memory per GPU per MoE layer: {s['replica_bytes_per_gpu_per_layer'] / 2**20:,.1f} MiB", ""]
    rows = [["local (same GPU)", f"{totals['local_bytes'] / 1e6:,.2f}"],
            ["NVLink, direct within domain", f"{totals['nvlink_direct_bytes'] / 1e6:,.2f}"],
            ["scale-out, direct all-to-all", f"{totals['scale_out_direct_bytes'] / 1e6:,.2f}"],
            ["scale-out, node-deduplicated (DeepEP)", f"{totals['scale_out_dedup_bytes'] / 1e6:,.2f}"],
            ["NVLink forwarding after scale-out", f"{totals['nvlink_forward_bytes'] / 1e6:,.2f}"]]
    lines.append(table([f"dispatch traffic ({s['dispatch_dtype']})", "MB"], rows, align="lr"))
    lines.append("combine mirrors dispatch in BF16 (combine_bytes_matrix = dispatch transposed)")
    return "\n".join(lines)


def bench_table(result: dict, tokens: int) -> str:
    """nccl-tests style: parameters, then a fixed table with units."""
    rows = []
    for key, label in (("routing", "routing DeepSeek-V3 (E256 k8 g8/4)"), ("routing_mixtral", "routing Mixtral (E8 k2)"),
                       ("traffic", "traffic DeepSeek-V3 (EP64, 8 nodes)")):
        r = result[key]
        rows.append([label, f"{r['tokens_per_s']:.3e}", f"{r['numpy_tokens_per_s']:.3e}",
                     f"{r['speedup_vs_numpy']:.1f}", f"{r['rng_floor_tokens_per_s']:.3e}", f"{r['ratio_to_rng_floor']:.2f}"])
    return "\n".join([f"# moesim bench kernels: {tokens:,} tokens per timed run, one core, best of repeats", "",
                      table(["kernel", "tokens/s", "numpy tokens/s", "speedup x", "RNG floor tokens/s",
                             "floor/kernel"], rows, align="lrrrrr")])


def comm_table(fleet: str, op: str, rows: list[dict]) -> str:
    """nccl-tests style: parameters, then size / time / algbw / busbw. `fleet` names the GPUs as
    `System.fleet_label` does."""
    head = [f"# moesim comm: {op} on {fleet} (predicted; nccl-tests definitions of algbw/busbw)"]
    head += [f"# {n}" for n in rows[0]["notes"]] if rows else []
    body = table(["size (B)", "time (us)", "algbw (GB/s)", "busbw (GB/s)", "algo", "proto", "bottleneck"],
                 [[f"{r['bytes']}", f"{r['time_us']:.2f}", f"{r['algbw_GBps']:.2f}", f"{r['busbw_GBps']:.2f}",
                   r["algo"], r["protocol"], r["bottleneck"]] for r in rows], align="rrrrlll")
    return "\n".join(head + ["", body])


# What the left-out columns of `validation_table` mean, per `moesim validate --cv` mode.
LEFT_OUT = {
    "source": "left-out: each source's cases predicted from parameters fitted without that source",
    "config": "left-out: each serving deployment configuration's cases (other kinds: each source's) predicted from "
              "parameters fitted without them",
    "model": "left-out: every serving deployment of a model (other kinds: each source's cases) predicted from "
             "parameters fitted without that model",
    "system": "left-out: every serving deployment on a system (other kinds: each source's cases) predicted from "
              "parameters fitted without that system",
}


def validation_table(result: dict) -> str:
    """Per case, then per `what`: with --cv the left-out (honest) MAPE and bias first, then in-sample."""
    cv = "mape_cv" in result
    head = ["case", "what", "metric", "measured", "predicted", "error"] + (["left-out", "error"] if cv else [])
    rows = []
    for c in result["cases"]:
        row = [c["id"], c["what"], c["metric"], f"{c['measured']:.4g}", f"{c['predicted']:.4g}",
               f"{100 * c['rel_error']:+.1f}%"]
        if cv:
            row += [f"{c['predicted_cv']:.4g}", f"{100 * c['rel_error_cv']:+.1f}%"]
        rows.append(row)
    out = [table(head, rows, align="lllrrr" + ("rr" if cv else "")), ""]
    count = {w: sum(1 for c in result["cases"] if c["what"] == w or f"{c['what']}.{c['metric']}" == w)
             for w in result["mape"]}
    count["overall"] = len(result["cases"])
    if cv:
        summary = [[k, str(count[k]), f"{100 * result['mape_cv'][k]:.1f}%", f"{100 * result['bias_cv'][k]:+.1f}%",
                    f"{100 * v:.1f}%", f"{100 * result['bias'][k]:+.1f}%"] for k, v in result["mape"].items()]
        out.append(table(["what", "cases", "MAPE left-out", "bias left-out", "MAPE in-sample", "bias in-sample"],
                         summary, align="lrrrrr"))
        out.append(LEFT_OUT.get(result.get("cv"), LEFT_OUT["source"]))
    else:
        summary = [[k, str(count[k]), f"{100 * v:.1f}%", f"{100 * result['bias'][k]:+.1f}%"]
                   for k, v in result["mape"].items()]
        out.append(table(["what", "cases", "MAPE", "bias"], summary, align="lrrr"))
    if result.get("groups"):
        out += ["", serving_groups_table(result["groups"])]
    out.append(f"kernel profile: {result.get('provenance', {}).get('kernel_profile')}")
    if result.get("repeatability"):
        out += ["", repeatability_table(result["repeatability"])]
    if result.get("relabelled"):
        out += ["", f"relabelled {len(result['relabelled'])} cases: simulated on the parallel split their run name "
                "states, not the contradicting one in their params (--json lists each with the reason; "
                "moesim/validation/serving_load_labels.py)"]
    if result["skipped"]:
        reasons: dict[str, int] = {}
        for s in result["skipped"]:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        out += ["", f"skipped {len(result['skipped'])} cases:"]
        out += [f"  {n:3d} x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])]
    return "\n".join(out)


def serving_groups_table(groups: dict) -> str:
    """validate's serving_load summary: MAPE and signed bias per metric, overall and per system,
    backend, backend version, mode and model (left-out columns when cross-validated)."""
    cv = any("mape_cv" in e["overall"] for e in groups.values())
    head = ["metric", "group", "name", "cases"] + (["MAPE left-out", "bias left-out"] if cv else []) + ["MAPE", "bias"]
    rows = []
    for metric, entry in groups.items():
        parts = [("overall", {"all": entry["overall"]})] + [(g, v) for g, v in entry.items() if g != "overall"]
        for group, stats in parts:
            for name, st in stats.items():
                rows.append([metric, group, name, str(st["cases"])]
                            + ([f"{100 * st['mape_cv']:.1f}%", f"{100 * st['bias_cv']:+.1f}%"] if cv else [])
                            + [f"{100 * st['mape']:.1f}%", f"{100 * st['bias']:+.1f}%"])
    return table(head, rows, align="lllr" + ("rr" if cv else "") + "rr")


def repeatability_table(repeats: dict) -> str:
    """validate's floor: benchmarks the cases measure more than once under the same stated parameters, and
    how far any one value per benchmark must sit from them (validation.repeatability)."""
    rows = [[kind, str(r["benchmarks"]), str(r["values"]), f"{100 * r['mape_floor']:.1f}%",
             "-" if r.get("model_mape") is None else f"{100 * r['model_mape']:.1f}%",
             f"{r['median_max_over_min']:.2f}", f"{r['max_max_over_min']:.2f}"] for kind, r in repeats.items()]
    return "\n".join([table(["repeated measurements", "benchmarks", "values", "MAPE floor", "moesim MAPE",
                             "median max/min", "largest max/min"], rows, align="lrrrrrr"),
                      "MAPE floor: the distinct values of each benchmark measured more than once (every stated "
                      "parameter equal) against the one value closest to them on average; no model predicting one "
                      "value per stated benchmark does better on them. moesim MAPE: its own (left-out with --cv) on "
                      "the values it predicted"])


def network_bench_table(result: dict) -> str:
    rows = [[r["gpus"], r.get("system", "synthetic"), f"{r['flows']:,}", f"{r['solve_s']:.4f}",
             "-" if r.get("numpy_solve_s") is None else f"{r['numpy_solve_s']:.4f}",
             "-" if r.get("speedup_vs_numpy") is None else f"{r['speedup_vs_numpy']:.1f}"] for r in result["network"]]
    return "\n".join(["# moesim bench network: max-min solve of a uniform all-to-all, one core, best of repeats", "",
                      table(["GPUs", "system", "flows", "solve (s)", "numpy solve (s)", "speedup x"], rows,
                            align="rlrrrr")])


def simulate_table(r: dict) -> str:
    m = r["metrics"]
    p = r["parallel"]
    head = (f"{r['scenario']}: {r['model']} {r['phase']} on {r.get('fleet') or str(r['gpus']) + ' x ' + r['system']} "
            f"(tp={p['tp']} pp={p['pp']} dp={p['dp']} ep={p['ep']}), overlap {r['overlap']}, seed {r['seed']}")
    lines = [f"WARNING: {w}" for w in r.get("warnings", [])] + [head, ""]
    if r["phase"] == "training":
        lines.append(f"step {m['step_time_s']:.3f} s; {m['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU; "
                     f"{m['tflops_per_gpu']:,.0f} TFLOP/s per GPU; MFU {m['mfu']:.1%}; "
                     f"pipeline bubble {m['pipeline_bubble_fraction']:.1%}")
    else:
        lat = f"TPOT {m['tpot_ms']:.2f} ms" if "tpot_ms" in m else f"TTFT {m['ttft_ms']:.2f} ms"
        lines.append(f"step {m['step_time_s'] * 1e3:.3f} ms; {lat}; {m['tokens_per_s_per_gpu']:,.0f} tokens/s "
                     f"per GPU; {m['tokens_per_s_per_node']:,.0f} per {(r.get('node') or {}).get('name', 'node')}")
    rows = [[k, f"{v['compute_s'] * 1e3:.3f}", f"{v['comm_s'] * 1e3:.3f}", f"{v['exposed_comm_s'] * 1e3:.3f}"]
            for k, v in sorted(r["breakdown"].items(), key=lambda kv: -(kv[1]["compute_s"] + kv[1]["comm_s"]))]
    lines += ["", table(["op class (critical GPU)", "compute ms", "comm ms", "exposed comm ms"], rows, align="lrrr")]
    band = r.get("uncertainty", {}).get("tokens_per_s_per_gpu")
    if band and band.get("centre") is not None:
        lines.append(f"\ntokens/s per GPU corrected for the model's measured bias: {band['centre']:,.0f} "
                     f"(band {band['low']:,.0f} .. {band['high']:,.0f}; {band['rests_on']})")
    elif band:
        lines.append(f"\ntokens/s per GPU: no error band ({band['rests_on']})")
    lines.append(f"\nmemory: {r['memory']['per_gpu']['total_bytes'] / 2**30:.2f} GiB per GPU, fits: "
                 f"{'yes' if r['memory']['fits'] else 'NO'}")
    return "\n".join(lines)


def ep_comm_table(r: dict) -> str:
    lines = [f"# moesim comm --ep: {r['model']} MoE layer on EP {r['ep']} x {r['system']}, {r['tokens']:,} tokens, "
             f"skew {r['skew']}, placement {r['placement']} (GPU load imbalance {r['imbalance']:.3f})"]
    lines += [f"# {n}" for n in r["notes"]]
    rows = [["dispatch", f"{r['dispatch_time_us']:.1f}", f"{r['dispatch_GBps_per_gpu'] or 0:.1f}"],
            ["combine", f"{r['combine_time_us']:.1f}", f"{r['combine_GBps_per_gpu'] or 0:.1f}"]]
    return "\n".join(lines + ["", table(["phase", "time (us)", "GB/s per GPU (incl. local)"], rows, align="lrr")])


def plan_table(r: dict) -> str:
    """Every simulated point, then the answer: best point and why the runners-up lost, or why no
    point meets the SLOs, or that every point was pruned. Sentences and a table only: the latency
    column is named for its metric (TPOT for decode, TTFT for prefill)."""
    headers = {"tpot_ms": "TPOT ms", "ttft_ms": "TTFT ms"}
    points = r.get("points", [])
    rows = []
    for p in points:
        cost = p.get("cost_per_million_tokens")
        rows.append([p["label"], f"{p['tokens_per_s_per_gpu']:,.0f}", f"{p['latency_ms']:.1f}",
                     "-" if cost is None else f"{cost:.3f}{'*' if p.get('cost_placeholder') else ''}",
                     "yes" if p.get("feasible") else "no"])
    out = [f"# moesim plan {r.get('space')}: {r.get('expanded')} points, {r.get('pruned')} pruned before "
           f"simulation, {r.get('simulated')} simulated, {r.get('from_cache')} from cache", ""]
    if points:
        metrics = sorted({p.get("latency_metric") or "tpot_ms" for p in points})
        latency = " / ".join(headers.get(m, m) for m in metrics)
        out.append(table(["configuration", "tokens/s/GPU", latency, "$/M tokens", "feasible"], rows, align="lrrrl"))
    reasons = r.get("pruned_reasons", [])
    for reason in reasons[:10]:
        out.append(f"pruned: {reason.get('label', reason.get('id'))}: {reason.get('reason')}")
    if len(reasons) > 10:
        out.append(f"pruned: {len(reasons) - 10} more (moesim plan --json lists every reason)")
    best = r.get("best")
    binding = r.get("binding_constraint")
    if best:
        out += ["", f"best ({r.get('objective')}): {best['label']}"]
        out += [f"  {line}" for line in band_lines(best.get("uncertainty") or {})]
        for loser in r.get("runners_up", []):
            out.append(f"  runner-up {loser['label']}: {loser.get('text') or loser.get('metric')}")
    elif not points:
        out += ["", f"no configuration was simulated: all {r.get('pruned')} points were pruned before simulation"
                    + (" (reasons above)" if reasons else "")]
    elif isinstance(binding, dict):
        out += ["", f"no configuration meets the SLOs: {binding.get('text') or binding.get('constraint')}"]
        for other in binding.get("all", [])[1:]:
            miss = other.get("closest_miss") or {}
            out.append(f"  also {other.get('constraint')}: violated by {other.get('violated_by')} of "
                       f"{binding.get('points', len(points))} points; the closest ({miss.get('label')}) misses it by "
                       f"{miss.get('relative', 0.0):.1%}")
    elif r.get("feasible") == []:
        out += ["", "no configuration meets the SLOs"]
    if any(p.get("cost_placeholder") for p in points):
        out.append("* cost uses a placeholder price (workloads/costs.yaml): set your own")
    return "\n".join(out)


def whatif_table(r: dict) -> str:
    keys = [k for k in ("tokens_per_s_per_gpu", "tpot_ms", "ttft_ms", "step_time_s", "mfu") if k in r["base"]]
    rows = [["base" + (" (cannot run)" if r.get("warnings") else "")] + [f"{r['base'][k]:,.4g}" for k in keys]]
    notes = [f"# WARNING: base: {w}" for w in r.get("warnings", [])]
    for v in r["variants"]:
        if v.get("metrics") is None:
            rows.append([v["change"]] + ["does not fit"] + ["-"] * (len(keys) - 1))
            notes.append(f"# {v['change']}: {v['problem']}")
            continue
        flag = "" if v.get("fits", True) else " (cannot run)"
        rows.append([v["change"] + flag] + [f"{v['metrics'][k]:,.4g} ({100 * v['relative_change'].get(k, 0):+.1f}%)"
                                            for k in keys])
        notes += [f"# WARNING: {v['change']}: {w}" for w in v.get("warnings", [])]
    return "\n".join([f"# moesim whatif: {r['scenario']} (each change alone against the base)", "",
                      table(["change"] + keys, rows, align="l" + "r" * len(keys))] + ([""] + notes if notes else []))


def serve_lengths(ld: dict, key: str, nominal: str) -> str:
    """`ISL 1,000`, or the distribution the lengths were drawn from (`ISL lognormal mean 1,000 sigma 0.5`)."""
    d = ld.get(key)
    name = nominal.upper()
    if d is None:
        return f"{name} {ld[nominal]:,}" if ld["mode"] != "trace" else f"{name} mean {ld[nominal]:,}"
    if d["distribution"] == "uniform":
        return f"{name} uniform {d['low']:,}-{d['high']:,}"
    cap = f" max {d['max']:,}" if d.get("max") is not None else ""
    return f"{name} lognormal mean {d['mean']:,g} sigma {d['sigma']:g}{cap}"


SLO_NAMES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_ms": "E2E"}


def goodput_line(g: dict) -> str:
    """A serve run's goodput in one line: the SLOs, the share of requests meeting them, the rates."""
    slo = ", ".join(f"{SLO_NAMES.get(k, k)} <= {v:g} ms" for k, v in g["slo_ms"].items())
    return (f"goodput ({slo}): {g['fraction']:.1%} of requests meet the SLOs ({g['good_requests']:,} of "
            f"{g['requests']:,}); {g['requests_per_s']:,.2f} requests/s, {g['output_tokens_per_s_per_gpu']:,.1f} "
            f"output tokens/s per GPU")


def band_lines(bands: dict) -> list[str]:
    """A serve run's error bands (`calibration.uncertainty.serving_bands`), a line per metric."""
    lines = []
    for key, b in bands.items():
        name = SLO_NAMES.get(key, key)
        if b["low"] is None:
            lines.append(f"mean {name}: no error band ({b['rests_on']})")
            continue
        ms = [f"{v:,.1f}" if v < 100 else f"{v:,.0f}" for v in (b["low"], b["high"], b["median"])]
        which = "of this backend and mode" + (", each predicted from a fit without its model, as yours is not "
                                              "among them" if b.get("new_model") else "")
        lines.append(f"mean {name}: {b['coverage']:.0%} band {ms[0]}-{ms[1]} ms, median {ms[2]} ms ({b['cases']:,} "
                     f"validated benchmarks {which}: MAPE {100 * b['mape']:.0f} %, mean signed error "
                     f"{100 * b['bias']:+.0f} %)")
    return lines


def serve_table(r: dict) -> str:
    """`moesim serve`: the load, latency percentiles per metric, throughput, and the KV in use; for a
    disaggregated run, the pools and the KV transfers."""
    m, ld, s, p = r["metrics"], r["load"], r["scheduler"], r["parallel"]
    if ld["mode"] == "closed":
        load = f"concurrency {ld['concurrency']} ({ld.get('closed_loop_start', 'burst')} start)"
    elif ld["mode"] == "open":
        load = f"rate {ld['rate_per_s']:g} requests/s"
    else:
        load = f"arrivals {ld['arrivals']}"
    head = (f"{r['scenario']}: {r['model']} on {r['fleet']} (tp={p['tp']} dp={p['dp']} ep={p['ep']}), "
            f"{r['framework']}; {load}, {serve_lengths(ld, 'input_lengths', 'isl')}, "
            f"{serve_lengths(ld, 'output_lengths', 'osl')}, {ld['requests']:,} requests "
            f"(+{ld['warmup']} warm-up), seed {ld['seed']}")
    rows = []
    for key, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E")):
        v = m[key]
        rows.append([name] + ([f"{v[k]:,.2f}" for k in ("mean", "p50", "p90", "p99")] if v else ["-"] * 4))
    per_user = m["output_tokens_per_s_per_user"]
    lines = [head, "", table(["latency ms", "mean", "p50", "p90", "p99"], rows, align="lrrrr"), "",
             f"{m['output_tokens_per_s_per_gpu']:,.1f} output tokens/s per GPU ({m['gpus']} GPUs); "
             f"{per_user:,.1f} per user; {m['requests_per_s']:,.2f} requests/s" if per_user is not None else
             f"{m['output_tokens_per_s_per_gpu']:,.1f} output tokens/s per GPU ({m['gpus']} GPUs); "
             f"{m['requests_per_s']:,.2f} requests/s",
             f"KV per rank: peak {s['peak_kv_tokens_per_rank']:,} of {s['kv_capacity_tokens_per_rank']:,} tokens; "
             f"peak {s['peak_running_per_rank']:,} running requests per rank; {s['steps']:,} engine steps"]
    if m.get("goodput"):   # after the throughput line
        lines.insert(5, goodput_line(m["goodput"]))
    lines += band_lines(r.get("uncertainty") or {})
    if "pools" in r and "kv_transfer" in r:
        pools, kv = r["pools"], r["kv_transfer"]
        lines.append("; ".join(f"{name} pool {q['instances']} x {q['gpus'] // q['instances']} GPUs, "
                               f"busy {q['busy_fraction']:.0%}" for name, q in pools.items()))
        t, w = kv["transfer_ms"], kv["wait_for_decode_slot_ms"]
        lines.append(f"KV transfer: {kv['bytes_per_request'] / 1e6:,.2f} MB per request over "
                     f"{'/'.join(kv['first_pair_links'])}, mean {t['mean']:,.3f} ms, p90 {t['p90']:,.3f} ms; "
                     f"wait for a decode slot mean {w['mean']:,.2f} ms, p90 {w['p90']:,.2f} ms")
    return "\n".join(lines)
