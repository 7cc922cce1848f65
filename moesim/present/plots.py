"""Figures (the one module that imports matplotlib): one function per figure, each returning a
matplotlib Figure built from plain result data, plus the writers (PNG bytes, a file, a PDF of
text pages and figures). Colours: the Okabe-Ito palette, readable by colour-blind readers and in
greyscale print; every axis names its quantity and unit."""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any, Iterable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from moesim.core.output import write_atomic_bytes  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999"]
# op classes in the order a layer runs them; each keeps its colour in every figure
OP_CLASSES = ["attention", "elementwise", "dense_mlp", "tp_allreduce", "router", "dispatch", "routed_experts",
              "shared_experts", "combine", "lm_head", "idle_wait", "forward", "backward"]
MEMORY_PARTS = [("weights_bytes", "weights"), ("kv_cache_bytes", "KV cache"), ("activations_bytes", "activations"),
                ("buffers_bytes", "comm buffers"), ("reserved_bytes", "reserved (runtime)"),
                ("gradients_bytes", "gradients"), ("optimizer_bytes", "optimizer state")]
GiB = 2**30
PNG_DPI = 110


# one fixed colour per op class: compute in blues/greens, communication in oranges/purples
OP_COLOURS = {"attention": "#0072B2", "elementwise": "#56B4E9", "dense_mlp": "#009E73", "router": "#332288",
              "routed_experts": "#117733", "shared_experts": "#44AA99", "lm_head": "#88CCEE",
              "dispatch": "#D55E00", "combine": "#E69F00", "tp_allreduce": "#CC79A7", "idle_wait": "#DDDDDD",
              "forward": "#0072B2", "backward": "#E69F00"}



def parity_axes(ax, lo: float, hi: float, band: float) -> list[float]:
    """A parity plot's frame: log axes over [lo, hi], the predicted = measured line and the
    +-band around it (the validation and the serving-load parity plots share it)."""
    xs = [lo, hi]
    ax.plot(xs, xs, color="black", linewidth=1, label="predicted = measured")
    ax.fill_between(xs, [x * (1 - band) for x in xs], [x * (1 + band) for x in xs], color="grey", alpha=0.2,
                    label=f"+-{100 * band:.0f}% band")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*xs)
    return xs

def op_colour(op_class: str) -> str:
    return OP_COLOURS.get(op_class, "#999999")


def _figure(width: float = 9.0, height: float = 4.6) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(width, height), dpi=PNG_DPI, layout="constrained")
    return fig, ax


# ----------------------------------------------------------------------------- simulate
def timeline_figure(timeline: dict, *, critical: Optional[int] = None, max_rows: int = 16) -> Figure:
    """One layer (serving) or one step's pipeline (training): a row per GPU or stage, its compute
    stream above its communication stream. Beyond `max_rows` GPUs the first ones and the
    critical GPU are drawn, and the title says how many are left out."""
    unit = timeline.get("rows", "gpu")
    spans = timeline["spans"]
    rows = sorted({s[0] for s in spans})
    shown = rows[:max_rows]
    if critical is not None and critical in rows and critical not in shown:
        shown = shown[:-1] + [critical]
    fig, ax = _figure(9.5, max(3.0, 0.42 * len(shown) + 1.6))
    y_of = {row: i for i, row in enumerate(shown)}
    used: list[str] = []
    for row, stream, op_class, _name, _mb, start, end in spans:
        if row not in y_of:
            continue
        y = y_of[row] + (0.0 if stream == "compute" else 0.42)
        ax.broken_barh([(start * 1e6, (end - start) * 1e6)], (y - 0.19, 0.36), facecolors=op_colour(op_class),
                       edgecolor="white", linewidth=0.3)
        if op_class not in used:
            used.append(op_class)
    ax.set_yticks([y_of[r] + 0.21 for r in shown])
    labels = [f"{unit} {r}" + (" (critical)" if r == critical else "") for r in shown]
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time from the start of the layer (µs)" if timeline.get("layer", -1) >= 0
                  else "time from the start of the step (µs)")
    left_out = len(rows) - len(shown)
    what = f"layer {timeline['layer']}" if timeline.get("layer", -1) >= 0 else "pipeline (1F1B)"
    ax.set_title(f"Timeline of {what}: upper bar compute stream, lower bar communication stream"
                 + (f" ({left_out} more {unit}s not drawn)" if left_out > 0 else ""), fontsize=10)
    handles = [matplotlib.patches.Patch(color=op_colour(c), label=c.replace("_", " ")) for c in used]
    ax.legend(handles=handles, fontsize=7, ncol=min(len(handles), 6), loc="upper center",
              bbox_to_anchor=(0.5, -0.18 if len(shown) < 6 else -0.08), frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def breakdown_figure(breakdown: dict, *, step_s: Optional[float] = None) -> Figure:
    """Seconds per op class on the critical GPU, split into compute, exposed communication,
    communication hidden under compute, and waiting for slower GPUs."""
    names = [n for n in OP_CLASSES if n in breakdown] + [n for n in breakdown if n not in OP_CLASSES]
    parts = [("compute_s", "compute", OKABE_ITO[0]), ("exposed_comm_s", "communication, exposed", OKABE_ITO[3]),
             ("hidden_comm_s", "communication, overlapped", OKABE_ITO[5]), ("idle_s", "waiting for peers", "#BBBBBB")]
    fig, ax = _figure(9.0, max(3.2, 0.36 * len(names) + 1.4))
    left = [0.0] * len(names)
    for key, label, colour in parts:
        values = []
        for n in names:
            row = breakdown[n]
            value = row.get("comm_s", 0.0) - row.get("exposed_comm_s", 0.0) if key == "hidden_comm_s" else row.get(key, 0.0)
            values.append(max(value, 0.0) * 1e3)
        if any(v > 0 for v in values):
            ax.barh(range(len(names)), values, left=left, color=colour, label=label)
            left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.replace("_", " ") for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time per step on the critical GPU (ms)")
    total = sum(left)
    title = f"Time per op class: {total:.2f} ms of spans"
    if step_s is not None:
        title += f", step {step_s * 1e3:.2f} ms"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def expert_heatmap_figure(expert_load: list[list[float]], moe_layers: list[int]) -> Figure:
    """Tokens routed to each expert in each MoE layer, relative to that layer's mean: hot experts
    are bright columns (skew) or bright cells (per-layer skew)."""
    import numpy as np
    load = np.asarray(expert_load, dtype=float)
    mean = load.mean(axis=1, keepdims=True)
    rel = np.divide(load, mean, out=np.zeros_like(load), where=mean > 0)
    fig, ax = _figure(9.5, 4.8)
    image = ax.imshow(rel, aspect="auto", interpolation="nearest", cmap="viridis",
                      extent=(-0.5, load.shape[1] - 0.5, len(moe_layers) - 0.5, -0.5))
    ticks = np.linspace(0, len(moe_layers) - 1, min(len(moe_layers), 8)).round().astype(int)
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(moe_layers[t]) for t in ticks])
    ax.set_xlabel("expert id")
    ax.set_ylabel("layer")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("tokens routed / layer mean")
    ax.set_title(f"Expert load: {load.shape[0]} MoE layers x {load.shape[1]} experts, hottest expert "
                 f"{rel.max():.2f}x its layer's mean", fontsize=10)
    return fig


def gpu_load_figure(gpu_load: list[list[float]]) -> Figure:
    """Routed tokens each GPU computes, summed over the MoE layers, with the mean and the
    imbalance ratio (max / mean): the slowest GPU sets every layer's pace."""
    import numpy as np
    per_layer = np.asarray(gpu_load, dtype=float)
    total = per_layer.sum(axis=0)
    mean = total.mean() if total.size else 0.0
    step_ratio = total.max() / mean if mean > 0 else math.nan
    layer_means = per_layer.mean(axis=1)
    layer_ratio = (per_layer.max(axis=1) / np.where(layer_means > 0, layer_means, np.nan))
    fig, ax = _figure(9.0, 4.2)
    hottest = int(np.argmax(total)) if total.size else 0
    colours = [OKABE_ITO[3] if g == hottest else OKABE_ITO[0] for g in range(total.size)]
    ax.bar(range(total.size), total / 1e3, color=colours)
    ax.axhline(mean / 1e3, color="black", linewidth=1, linestyle="--", label=f"mean {mean / 1e3:.1f} k")
    ax.set_xlabel("GPU (EP rank)")
    ax.set_ylabel("routed tokens over all MoE layers (thousands)")
    ax.set_title(f"Per-GPU expert load: imbalance max/mean {step_ratio:.3f} over the step, "
                 f"{np.nanmax(layer_ratio):.3f} in the worst layer", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def traffic_figure(dispatch_bytes: list[list[float]], *, layer: int, gpus_per_node: Optional[int] = None) -> Figure:
    """Dispatch bytes from each source GPU (row) to each destination GPU (column) in one MoE
    layer; node boundaries drawn, so NVLink blocks sit on the diagonal and network traffic off it."""
    import numpy as np
    matrix = np.asarray(dispatch_bytes, dtype=float) / 1e6
    fig, ax = _figure(7.2, 6.0)
    image = ax.imshow(matrix, interpolation="nearest", cmap="magma")
    n = matrix.shape[0]
    if gpus_per_node and n > gpus_per_node:
        for edge in range(gpus_per_node, n, gpus_per_node):
            ax.axhline(edge - 0.5, color="white", linewidth=0.8)
            ax.axvline(edge - 0.5, color="white", linewidth=0.8)
    ax.set_xlabel("destination GPU")
    ax.set_ylabel("source GPU")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("dispatch bytes (MB)")
    ax.set_title(f"Dispatch traffic of layer {layer}: {matrix.sum():.1f} MB in all", fontsize=10)
    return fig


def vram_figure(memory: dict) -> Figure:
    """Per-GPU memory of each pipeline stage (every GPU of a stage holds the same), stacked by
    what holds it, against the HBM capacity and the framework's budget."""
    stages = memory.get("stages") or [dict(memory["per_gpu"], stage=0)]
    capacity = memory["per_gpu"]["capacity_bytes"] / GiB
    fig, ax = _figure(min(5.5 + 0.6 * len(stages), 10.0), 4.6)
    bottom = [0.0] * len(stages)
    for i, (key, label) in enumerate(MEMORY_PARTS):
        values = [s.get(key, 0.0) / GiB for s in stages]
        if any(v > 0 for v in values):
            ax.bar(range(len(stages)), values, bottom=bottom, color=OKABE_ITO[i % len(OKABE_ITO)], label=label,
                   width=0.5)
            bottom = [a + b for a, b in zip(bottom, values)]
    ax.axhline(capacity, color="black", linewidth=1.2, label=f"HBM capacity {capacity:.1f} GiB")
    if memory.get("budget_bytes"):
        budget = memory["budget_bytes"] / GiB
        ax.axhline(budget, color=OKABE_ITO[3], linestyle="--", linewidth=1,
                   label=f"budget x{memory.get('memory_fraction', 1):g} = {budget:.1f} GiB")
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels([f"stage {s.get('stage', i)}\n(every GPU)" for i, s in enumerate(stages)], fontsize=8)
    ax.set_ylabel("memory per GPU (GiB)")
    fits = "fits" if memory.get("fits") else "does NOT fit"
    ax.set_title(f"VRAM per GPU: {max(bottom):.1f} of {capacity:.1f} GiB, {fits}", fontsize=10)
    ax.set_ylim(0, max(capacity, max(bottom)) * 1.12)
    ax.set_xlim(-0.75, max(len(stages), 2) - 0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    return fig


# ----------------------------------------------------------------------------- plan
def pareto_figure(plan: dict) -> Figure:
    """Every simulated configuration: throughput per GPU against the latency metric, feasible
    ones filled, the throughput-latency Pareto front joined, the SLO drawn, the best ringed."""
    points = plan["points"]
    front_ids = set(plan.get("pareto", {}).get("throughput_vs_latency", []))
    fig, ax = _figure(9.0, 5.6)
    systems = sorted({p["system"] for p in points})
    for i, system in enumerate(systems):
        mine = [p for p in points if p["system"] == system]
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        for feasible, marker in ((True, "o"), (False, "x")):
            sel = [p for p in mine if p["feasible"] == feasible]
            if sel:
                ax.scatter([p["latency_ms"] for p in sel], [p["tokens_per_s_per_gpu"] for p in sel], color=colour,
                           marker=marker, s=36, label=f"{system} ({'meets SLO' if feasible else 'violates SLO'})")
    front = sorted((p for p in points if p["id"] in front_ids), key=lambda p: p["latency_ms"])
    if front:
        ax.plot([p["latency_ms"] for p in front], [p["tokens_per_s_per_gpu"] for p in front], color="black",
                linewidth=1, label="Pareto front")
    metric = points[0]["latency_metric"] if points else "tpot_ms"
    limit = plan.get("slo", {}).get(f"{metric}_max")
    if limit is not None:
        ax.axvline(limit, color=OKABE_ITO[3], linestyle="--", linewidth=1.2, label=f"SLO {metric} <= {limit:g}")
    best = plan.get("best")
    if best:
        ax.scatter([best["latency_ms"]], [best["tokens_per_s_per_gpu"]], s=180, facecolors="none",
                   edgecolors="black", linewidths=1.5, label=f"best: {best['label']}")
    ax.set_xlabel(f"{metric.removesuffix('_ms').upper()} (ms)")
    ax.set_ylabel("tokens/s per GPU")
    ax.set_title(f"Plan {plan.get('space', '')}: {len(points)} configurations, {len(plan.get('feasible', []))} meet "
                 f"the SLO", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.grid(True, alpha=0.3)
    return fig


def front_figure(plan: dict) -> Figure:
    """The throughput-interactivity front of a plan under load (issue 16): output tokens/s per GPU
    against output tokens/s per user, every served configuration a marker (filled: meets the SLOs,
    x: violates them), each system's Pareto points joined into its curve, the best ringed."""
    points = [p for p in plan["points"] if p.get("tokens_per_s_per_user") is not None]
    fronts = plan.get("fronts_by_system", {})
    fig, ax = _figure(9.0, 5.6)
    for i, system in enumerate(sorted({p["system"] for p in points})):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        mine = [p for p in points if p["system"] == system]
        for feasible, marker in ((True, "o"), (False, "x")):
            sel = [p for p in mine if p["feasible"] == feasible]
            if sel:
                ax.scatter([p["tokens_per_s_per_user"] for p in sel], [p["tokens_per_s_per_gpu"] for p in sel],
                           color=colour, marker=marker, s=36,
                           label=f"{system} ({'meets SLO' if feasible else 'violates SLO'})")
        ids = fronts.get(system, [])
        curve = sorted((p for p in mine if p["id"] in ids), key=lambda p: p["tokens_per_s_per_user"])
        if curve:
            ax.plot([p["tokens_per_s_per_user"] for p in curve], [p["tokens_per_s_per_gpu"] for p in curve],
                    color=colour, linewidth=1.4, label=f"{system} Pareto front")
    limit = plan.get("slo", {}).get("min_tokens_per_s_per_user")
    if limit is not None:
        ax.axvline(limit, color=OKABE_ITO[3], linestyle="--", linewidth=1.2,
                   label=f"SLO tokens/s per user >= {limit:g}")
    best = plan.get("best")
    if best and best.get("tokens_per_s_per_user") is not None:
        ax.scatter([best["tokens_per_s_per_user"]], [best["tokens_per_s_per_gpu"]], s=180, facecolors="none",
                   edgecolors="black", linewidths=1.5, label=f"best: {best['label']}")
    ax.set_xlabel("output tokens/s per user (interactivity)")
    ax.set_ylabel("output tokens/s per GPU (throughput)")
    ax.set_title(f"Plan {plan.get('space', '')}: throughput-interactivity front, {len(points)} served configurations, "
                 f"{len(plan.get('feasible', []))} meet the SLO", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.grid(True, alpha=0.3)
    return fig


def front_plot(plan: dict, path: str) -> Path:
    """The throughput-interactivity front written atomically (PNG, or PDF/SVG by suffix)."""
    return write_atomic_bytes(path, figure_bytes(front_figure(plan), Path(path).suffix.lstrip(".") or "png"))


# ----------------------------------------------------------------------------- serve
SERVE_LATENCIES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E"))
PERCENTILE_STYLES = (("p50", ":"), ("p90", "--"), ("p99", "-."))


def latency_cdf_figure(samples: dict, metrics: dict, *, slo: Optional[dict] = None) -> Figure:
    """A serve run's per-request latencies as empirical CDFs, one panel each for TTFT, TPOT and
    E2E (`samples`: ms per measured request), with the run's p50, p90 and p99 (`metrics`, the
    percentile table's values) marked and, when given, the SLO (`slo`: ms per metric) with the
    share of requests within it."""
    import numpy as np
    fig, axes = plt.subplots(1, len(SERVE_LATENCIES), figsize=(12.5, 4.2), dpi=PNG_DPI, layout="constrained")
    for ax, (key, name) in zip(axes, SERVE_LATENCIES):
        values = np.sort(np.asarray(samples.get(key) or [], dtype=float))
        if values.size == 0:
            ax.text(0.5, 0.5, f"no {name} samples", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", color=OKABE_ITO[0], linewidth=1.5,
                label=f"{values.size:,} requests")
        stats = metrics.get(key) or {}
        for (q, style), colour in zip(PERCENTILE_STYLES, (OKABE_ITO[2], OKABE_ITO[1], OKABE_ITO[4])):
            if stats.get(q) is not None:
                ax.axvline(stats[q], color=colour, linestyle=style, linewidth=1.2, label=f"{q} {stats[q]:,.2f} ms")
        bound = (slo or {}).get(key)
        if bound is not None:
            within = float(np.mean(values <= bound))
            ax.axvline(bound, color=OKABE_ITO[3], linewidth=1.8, label=f"SLO {bound:g} ms ({within:.0%} within)")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"{name} per request (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{name}: mean {stats.get('mean', float(values.mean())):,.2f} ms", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return fig


def serve_timeline_figure(timeline: dict) -> Figure:
    """Batch and KV over a serve run (`timeline`, sampled at evenly spaced times): running and
    waiting requests summed over the ranks (upper panel), KV tokens in use as a share of the
    capacity of those ranks (lower panel). A disaggregated run's timeline is its decode pool's."""
    import numpy as np
    t = np.asarray(timeline["t_s"], dtype=float)
    pool = timeline.get("pool")
    where = f"{pool} pool" if pool else "all ranks"
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9.0, 5.8), dpi=PNG_DPI, layout="constrained", sharex=True)
    running = np.asarray(timeline["running_requests"], dtype=float)
    waiting = np.asarray(timeline["waiting_requests"], dtype=float)
    top.step(t, running, where="post", color=OKABE_ITO[0], linewidth=1.3, label="running (in the batch)")
    if waiting.any() or not pool:
        top.step(t, waiting, where="post", color=OKABE_ITO[1], linewidth=1.3, label="waiting (queued)")
    top.set_ylabel(f"requests ({where})")
    peak = int(running.max()) if running.size else 0
    top.set_title(f"Batch over time: peak {peak:,} running requests ({where})", fontsize=10)
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    capacity = timeline.get("kv_capacity_tokens") or 0
    used = np.asarray(timeline["kv_used_tokens"], dtype=float)
    share = 100 * used / capacity if capacity else np.zeros_like(used)
    bottom.step(t, share, where="post", color=OKABE_ITO[2], linewidth=1.3)
    bottom.fill_between(t, share, step="post", color=OKABE_ITO[2], alpha=0.25)
    bottom.set_ylabel("KV in use (% of capacity)")
    bottom.set_xlabel("simulated time (s)")
    top_share = float(share.max()) if share.size else 0.0
    bottom.set_title(f"KV cache over time: peak {top_share:.2f} % of {capacity:,} tokens ({where})", fontsize=10)
    bottom.set_ylim(0, max(top_share * 1.15, 1e-9) if top_share < 100 else 105)
    bottom.grid(True, alpha=0.3)
    return fig


# ----------------------------------------------------------------------------- validation
def parity_figure(result: dict, *, band: float = 0.15) -> Figure:
    """Predicted vs measured for every validated case, one marker per `what`, log-log, with the
    y = x line and a +-`band` relative band; each case normalised by its own metric's unit, so
    metrics of different kinds share the axes."""
    fig, ax = _figure(7.5, 6.3)
    markers = "os^vD<>ph*X"
    cases = result["cases"]
    whats = sorted({c["what"] for c in cases})
    lo = min([c["measured"] for c in cases] + [c["predicted"] for c in cases] + [1.0])
    hi = max([c["measured"] for c in cases] + [c["predicted"] for c in cases] + [10.0])
    for i, what in enumerate(whats):
        rows = [c for c in cases if c["what"] == what]
        mape = result["mape"].get(what)
        label = f"{what} ({len(rows)}, MAPE {100 * mape:.0f}%)" if mape is not None else what
        ax.scatter([c["measured"] for c in rows], [c["predicted"] for c in rows], marker=markers[i % len(markers)],
                   s=22, alpha=0.75, label=label, color=OKABE_ITO[i % len(OKABE_ITO)])
    xs = parity_axes(ax, lo / 2, hi * 2, band)
    ax.set_ylim(*xs)
    ax.set_xlabel("measured (each case in its own metric's unit: GB/s, TFLOP/s, µs, GiB, tokens/s)")
    ax.set_ylabel("predicted by moesim (same unit)")
    ax.set_title(f"moesim validation: {len(cases)} cases, overall MAPE {100 * result['mape'].get('overall', 0):.1f}%",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    return fig


SERVING_LOAD = "serving_load"
SERVING_METRICS = (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"))


def has_serving_load(result: dict) -> bool:
    return any(c["what"] == SERVING_LOAD for c in result["cases"])


def serving_parity_figure(result: dict, *, band: float = 0.15) -> Figure:
    """Serving benchmarks (`serving_load` cases): predicted vs measured TTFT and TPOT side by side,
    log-log, one colour per system, the y = x line and a +-`band` band; each panel's title gives its
    MAPE and bias (and the left-out ones with --cv)."""
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.6), dpi=PNG_DPI, layout="constrained")
    rows = [c for c in result["cases"] if c["what"] == SERVING_LOAD]
    systems = sorted({c.get("labels", {}).get("system", "?") for c in rows})
    markers = "os^vD<>ph*X"
    for ax, (metric, label) in zip(axes, SERVING_METRICS):
        mine = [c for c in rows if c["metric"] == metric]
        values = [c["measured"] for c in mine] + [c["predicted"] for c in mine]
        lo, hi = (min(values), max(values)) if values else (1.0, 10.0)
        for i, system in enumerate(systems):
            pts = [c for c in mine if c.get("labels", {}).get("system", "?") == system]
            if pts:
                ax.scatter([c["measured"] for c in pts], [c["predicted"] for c in pts], s=14, alpha=0.7,
                           marker=markers[i % len(markers)], color=OKABE_ITO[i % len(OKABE_ITO)],
                           label=f"{system} ({len(pts)})")
        parity_axes(ax, lo / 1.5, hi * 1.5, band)
        ax.set_xlabel(f"measured {label}")
        ax.set_ylabel(f"predicted {label} (moesim serve)")
        key = f"{SERVING_LOAD}.{metric}"
        head = f"{label.split()[0]}: {len(mine)} cases"
        if key in result.get("mape", {}):
            head += f", MAPE {100 * result['mape'][key]:.1f}%, bias {100 * result['bias'][key]:+.1f}%"
        if key in result.get("mape_cv", {}):
            head += f"\nleft out ({result.get('cv')}): MAPE {100 * result['mape_cv'][key]:.1f}%, " \
                    f"bias {100 * result['bias_cv'][key]:+.1f}%"
        ax.set_title(head, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    return fig


# ----------------------------------------------------------------------------- writers
def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """The figure encoded (PNG at PNG_DPI, or SVG/PDF), then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=PNG_DPI, metadata={"Software": None} if fmt == "png" else None)
    plt.close(fig)
    return buffer.getvalue()


def parity_plot(result: dict, path: str, *, band: float = 0.15) -> Path:
    """The parity figure written atomically (PNG, or PDF/SVG by suffix): serving benchmarks' TTFT and
    TPOT by system when the result has serving_load cases and nothing else, else every case by what."""
    only_serving = has_serving_load(result) and all(c["what"] == SERVING_LOAD for c in result["cases"])
    fig = serving_parity_figure(result, band=band) if only_serving else parity_figure(result, band=band)
    return write_atomic_bytes(path, figure_bytes(fig, Path(path).suffix.lstrip(".") or "png"))


def _text_page(title: str, blocks: Iterable[tuple[str, list[str]]]) -> list[Figure]:
    """A4 portrait pages of headed monospace text blocks (long blocks flow onto more pages)."""
    pages: list[Figure] = []
    lines: list[tuple[str, str]] = [("title", title)]
    for heading, body in blocks:
        lines.append(("heading", heading))
        for line in body:
            indent = " " * (len(line) - len(line.lstrip(" -")))
            lines += [("body", part) for part in textwrap.wrap(line, 112, subsequent_indent=indent or "  ",
                                                                  replace_whitespace=False, drop_whitespace=False)
                      or [""]]
        lines.append(("body", ""))
    per_page = 64
    for start in range(0, len(lines), per_page):
        fig = plt.figure(figsize=(8.27, 11.69))
        y = 0.96
        for kind, text in lines[start:start + per_page]:
            size, weight, family = {"title": (14, "bold", "sans-serif"), "heading": (10.5, "bold", "sans-serif"),
                                    "body": (7.5, "normal", "monospace")}[kind]
            fig.text(0.06, y, text, fontsize=size, fontweight=weight, family=family, va="top")
            y -= 0.024 if kind == "title" else 0.0142
        pages.append(fig)
    return pages


def write_pdf(path: str | Path, *, title: str, blocks: list[tuple[str, list[str]]],
              figures: list[tuple[Figure, str]]) -> Path:
    """One PDF: text pages (the report's inputs, assumptions and tables), then one page per
    figure with its caption. Written atomically; figures are closed."""
    buffer = io.BytesIO()
    with PdfPages(buffer, metadata={"Title": title, "Creator": "moesim report", "CreationDate": None}) as pdf:
        for page in _text_page(title, blocks):
            pdf.savefig(page)
            plt.close(page)
        for fig, caption in figures:
            engine = fig.get_layout_engine()
            if engine is not None and hasattr(engine, "set"):
                engine.set(rect=(0, 0.09, 1, 0.91))  # room for the caption under the axes
            fig.text(0.02, 0.01, textwrap.fill(caption, 150), fontsize=6.5, va="bottom")
            pdf.savefig(fig)
            plt.close(fig)
    return write_atomic_bytes(path, buffer.getvalue())
