"""Figures (the one module that imports matplotlib): one function per figure, written to a file."""
from __future__ import annotations

from pathlib import Path


def parity_plot(result: dict, path: str, *, band: float = 0.15) -> Path:
    """Predicted vs measured for every validated case, one marker per `what`, log-log, with the
    y = x line and a +-`band` relative band; each case normalised by its own metric's unit, so
    metrics of different kinds share the axes. Written atomically (PNG, or PDF/SVG by suffix)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .result import write_atomic_bytes

    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
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
                   s=22, alpha=0.75, label=label)
    xs = [lo / 2, hi * 2]
    ax.plot(xs, xs, color="black", linewidth=1, label="predicted = measured")
    ax.fill_between(xs, [x * (1 - band) for x in xs], [x * (1 + band) for x in xs], color="grey", alpha=0.2,
                    label=f"+-{100 * band:.0f}%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*xs)
    ax.set_ylim(*xs)
    ax.set_xlabel("measured (each case in its own metric's unit: GB/s, TFLOP/s, us, GiB, tokens/s)")
    ax.set_ylabel("predicted by moesim (same unit)")
    ax.set_title(f"moesim validation: {len(cases)} cases, overall MAPE {100 * result['mape'].get('overall', 0):.1f}%")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return write_atomic_bytes(path, buffer.getvalue())
