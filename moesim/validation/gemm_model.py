"""GEMM and grouped-GEMM cases as fit targets of the kernel model in `costs/gemm_kernels.py`.

A case names m, n, k, dtype (+ groups and layout for grouped GEMMs; m is per group) and a system;
the metric is `tflops` = 2·m·n·k·groups / time. What is computed once per case (parameter-free):

* the library and its version, from params `library`/`tool` or else the source/notes text, by the
  rule table `topologies/kernels/libraries/gemm.yaml`;
* the CTA tile: DeepGEMM's own block-size chooser over that version's tile set; for cuBLAS(Lt) and
  torch every tile of the GPU's `gemm_tiles` (TensorRT-LLM's CUTLASS set) is a candidate and the
  fastest under the parameter values is taken, as a heuristic/autotuner would;
* waves on the GPU's SMs, the dense tensor peak of the dtype family, the HBM bytes and the
  measured HBM bandwidth (`costs/compute.hbm_effective_Bps`).

Parameters read (all in `topologies/kernels/gemm.yaml`): `gemm.eff.<format>.<arch>`,
`gemm.fixed_us.<kernels>`, `gemm.tile_us.<kernels>`, `gemm.group_us.deepgemm` (m-grouped layouts),
where <kernels> is deepgemm or cublas (torch.matmul and torch._scaled_mm run cuBLAS(Lt) kernels). The format is the dtype family, refined by
how the library scales FP8: `fp8` (per-tensor scales: cuBLASLt, torch._scaled_mm), `fp8_block`
(DeepGEMM: 1x128 activation and 128x128 weight scales promoted on CUDA cores), `fp8_wgrad`
(DeepGEMM's weight-gradient kernel: 1x128 scales on both operands, FP32 output accumulated).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

from moesim.calibration.kernel_fit import Target
from moesim.core.errors import MoesimError
from moesim.core.loader import data_root, read_yaml
from moesim.costs import gemm_kernels as gk
from moesim.costs.compute import hbm_effective_Bps, load_compute_profile
from moesim.specs import precision
from moesim.specs.hardware import load_system
from moesim.validation.cases import Skip
from moesim.validation.targets import group_of

USED = ("m", "n", "k", "dtype", "groups", "layout", "library", "tool")
LAYOUTS = (None, "contiguous", "masked", "k_grouped_contiguous")
FAMILIES = ("bf16", "fp8", "fp4")


@lru_cache(maxsize=1)
def library_table() -> dict:
    data, _ = read_yaml(data_root() / "topologies" / "kernels" / "libraries" / "gemm.yaml")
    return data


def library_of(case: Any) -> tuple[str, dict]:
    """(library, version record) of a case: params `library`/`tool`, else the first rule whose
    text occurs in the case's source or notes (see the YAML's header for the rule)."""
    table = library_table()
    named = case.params.get("library") or case.params.get("tool")
    if named:
        key = str(named).lower()
        if key in table["versions"]:
            return table["versions"][key].get("library", key.split("-")[0]), table["versions"][key]
        for rule in table["rules"]:
            if rule["library"] == key:
                return key, table["versions"][rule["version"]]
        raise Skip(f"library {named!r} has no GEMM model; known: {', '.join(sorted(table['versions']))}")
    text = f"{case.source} {getattr(case, 'notes', '') or ''}"
    for rule in table["rules"]:
        if rule["match"] in text:
            return rule["library"], table["versions"][rule["version"]]
    raise Skip("the source does not say which GEMM library ran the case (no params.library, no rule in "
               "topologies/kernels/libraries/gemm.yaml matches its source or notes)")


def _family(dtype: str) -> str:
    if dtype in FAMILIES:
        return dtype
    if dtype in precision.names() and precision.get(dtype).family in FAMILIES:
        return precision.get(dtype).family
    raise Skip(f"dtype {dtype!r} has no tensor-core GEMM format; use one of bf16, fp8, fp8_block128, fp4")


def format_of(dtype: str, library: str, layout: Optional[str]) -> str:
    """Parameter key of the number format as the library runs it (module docstring)."""
    family = _family(dtype)
    if family != "fp8":
        return family
    if library == "deepgemm":
        return "fp8_wgrad" if layout == "k_grouped_contiguous" else "fp8_block"
    return "fp8_block" if "block" in dtype else "fp8"


def _params(case: Any) -> dict:
    if case.metric != "tflops":
        raise Skip(f"metric {case.metric!r} is not modelled for {case.what}; only tflops")
    p = case.params
    need = ("m", "n", "k", "dtype") + (("groups",) if case.what == "grouped_gemm" else ())
    missing = [n for n in need if n not in p]
    if missing:
        raise Skip(f"missing params: {', '.join(missing)}")
    for name in ("m", "n", "k") + (("groups",) if case.what == "grouped_gemm" else ()):
        v = p[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise Skip(f"{name} must be a positive number, got {v!r}")
    if case.what == "grouped_gemm" and (not float(p["groups"]).is_integer()):
        raise Skip(f"groups must be a whole number, got {p['groups']!r}")
    if p.get("layout") not in LAYOUTS:
        raise Skip(f"layout {p.get('layout')!r} is not modelled; known: {', '.join(str(x) for x in LAYOUTS[1:])}")
    return p


def shape_of(case: Any) -> tuple[gk.KernelShape, dict[str, str]]:
    """The parameter-free kernel shape of a case and the parameter names its time reads."""
    p = _params(case)
    groups = int(p.get("groups", 1))
    m, n, k, dtype, layout = float(p["m"]), float(p["n"]), float(p["k"]), str(p["dtype"]), p.get("layout")
    library, version = library_of(case)
    fmt = format_of(dtype, library, layout)
    try:
        gpu = load_system(case.system).gpu
        profile = load_compute_profile(gpu.id)
        peak = gpu.peak_flops(_family(dtype))
        hbm = hbm_effective_Bps(gpu, profile)
        a_bytes = precision.bytes_per_element(dtype)
    except MoesimError as exc:
        raise Skip(f"system {case.system!r}: {exc.one_line()}") from None
    if peak is None:
        raise Skip(f"{gpu.id} has no {_family(dtype)} tensor cores")
    arch, sms = gpu.arch.value, int(gpu.sm_count.value)
    per_group = bool(version.get("kernel_per_group")) and layout == "k_grouped_contiguous"
    rows = [m] if per_group else [m] * groups
    kernels = groups if per_group else 1
    c_bytes, c_reads = (4.0, 1) if fmt == "fp8_wgrad" else (precision.bytes_per_element("bf16"), 0)
    if version["chooser"] == "deepgemm":
        tile = gk.deepgemm_tile(rows, n, sms, version["block_m"], version["block_n"],
                                small_m_only=bool(version.get("block_m_small_only")),
                                fixed_block_m=version["contiguous_block_m"] if layout == "contiguous" else None)
        tiles = [tile]
    else:
        tiles = [tuple(t) for t in profile.gemm_tiles.value]
    shape = gk.kernel_shape(rows, n, k, tiles=tiles, sms=sms, peak_flops=peak, a_bytes=a_bytes, c_bytes=c_bytes,
                            hbm_Bps=hbm, c_reads=c_reads, kernels=kernels)
    names = {"eff": f"gemm.eff.{fmt}.{arch}", "fixed": f"gemm.fixed_us.{version.get('kernels', library)}",
             "tile_us": f"gemm.tile_us.{version.get('kernels', library)}"}
    if layout in ("contiguous", "masked") and version.get("group_us"):
        names["group_us"] = f"gemm.group_us.{version.get('kernels', library)}"
    return shape, names


def prepare(case: Any, calibration: Any = None) -> Target:
    """A target predicting the case's TFLOP/s from the gemm.* parameters.

    With a microbenchmark profile measured on the case's GPU (`validate --profile`), its fitted
    matmul efficiency of the format's family replaces the fitted per-architecture one (a rate
    measured on this very GPU beats one fitted across published cases); fixed, per-tile and
    per-group costs stay the kernel fit's."""
    shape, names = shape_of(case)
    ignored = [key for key in case.params if key not in USED]
    measured = _measured_efficiency(case, calibration)
    if measured is not None:
        fixed = {names["eff"]: measured}

        def model(values):
            return gk.kernel_tflops(shape, _Overlay(values, fixed), **names)
    else:
        def model(values):
            return gk.kernel_tflops(shape, values, **names)
    return Target(id=case.id, what=case.what, metric=case.metric, measured=case.measured, group=group_of(case),
                  model=model, ignored=ignored)


def _measured_efficiency(case: Any, calibration: Any) -> Optional[float]:
    if calibration is None:
        return None
    profile = calibration.profile
    if load_system(case.system).gpu.id != profile.gpu:
        return None
    fit = profile.matmul_peak_efficiency.get(_family(str(case.params["dtype"])))
    return None if fit is None else fit.value


class _Overlay:
    """Parameter values with some replaced; reads of replaced names never reach (or count in) `base`."""

    def __init__(self, base, fixed: dict[str, float]):
        self.base, self.fixed = base, fixed

    def __getitem__(self, key: str) -> float:
        return self.fixed[key] if key in self.fixed else self.base[key]

    def get(self, key: str, default=None):
        return self.fixed.get(key, self.base.get(key, default))
