"""The kernel-parameter table of docs/kernel-parameters.md, rendered from the definitions and the
shipped fit, so the document cannot drift from the data. Regenerate:

    python -m moesim.present.kernel_docs > docs/kernel-parameters.md
"""
from __future__ import annotations

import yaml

from moesim.calibration.kernel_params import default_profile_path, definitions

INTRO = """# Kernel-model parameters

Every prediction of a kernel (EP dispatch/combine, collective, GEMM, copy) and of a training step
rests on the named physical parameters below: a property of a GPU architecture (`hopper` =
H100/H800/H200, `blackwell` = B200/GB200), a kernel library (`deepep-v1`, `hybrid-ep`,
`deepgemm`, `cublas`, NCCL), a link class or a framework, never of one case. Each has a unit, a
sourced default (`moesim validate --profile spec` runs on the defaults alone) and bounds; `moesim
calibrate --cases validation/cases.yaml -o topologies/calibration/kernels.yaml` fits them by least
squares on log(predicted/measured) with a weak prior towards the default (end-to-end serving
benchmarks with a robust soft-L1 loss instead, `kernel_fit.ROBUST_LOG_SCALE`), and that shipped fit is
what `simulate`, `plan` and `validate` use. Formulas: the header of each
`topologies/kernels/<family>.yaml` and the module it names. Honest accuracy: `moesim validate
--cases validation/cases.yaml --cv source` (each source left out in turn; README, Validation).

"fitted" gives the shipped value ± its standard error and the number of cases it rests on;
"default" means no case constrains it and the sourced default is kept. A standard error as
large as the value means the cases barely constrain the parameter.
"""


def render() -> str:
    defs = definitions()
    fitted = {}
    path = default_profile_path()
    if path.exists():
        fitted = yaml.safe_load(path.read_text())["parameters"]
    lines = [INTRO]
    family = None
    for name in sorted(defs):
        fam = name.split(".")[0]
        if fam != family:
            family = fam
            lines += ["", f"## {fam} (`topologies/kernels/{fam}.yaml`)", "",
                      "| parameter | unit | meaning | default (source) | fitted |", "| --- | --- | --- | --- | --- |"]
        d = defs[name]
        f = fitted.get(name)
        if f and f.get("fitted"):
            err = f" ± {f['stderr']:.3g}" if f.get("stderr") is not None else ""
            value = f"{f['value']:.4g}{err} ({f['cases']} cases)"
        else:
            value = "default"
        cell = lambda s: str(s).replace("|", "/").replace("\n", " ")  # noqa: E731
        lines.append(f"| `{name}` | {cell(d.unit)} | {cell(d.meaning)} | {d.value:g} ({cell(d.source)}) | {value} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
