"""Which calibration a step runs on, and what its result rests on: provenance and error bands."""
from __future__ import annotations

from moesim.cluster.scenario import Scenario
from moesim.core.errors import MoesimError
from moesim.costs.compute import load_compute_profile


def calibration_name(sc: Scenario):
    """The calibration profile in force: the scenario's (or --profile), else the system file's."""
    return sc.input.runtime.profile or sc.system.spec.calibration


def kernel_profile(sc: Scenario):
    """The kernel-model parameters in force (`runtime.kernel_profile`; default the shipped fit)."""
    from moesim.calibration.kernel_params import resolve_kernel_profile
    return resolve_kernel_profile(sc.input.runtime.kernel_profile)


def kernel_values_key(sc: Scenario) -> str:
    """The kernel-parameter values in force, as text: part of the key of anything simulated with
    them and kept across runs of one process (step times, routed-expert parts), so a process that
    simulates under two profiles (a calibration's passes, a test) never reuses the other's."""
    values = kernel_profile(sc).values()
    return ",".join(f"{k}={values[k]!r}" for k in sorted(values))


def gemm_fit(sc: Scenario, prof):
    """The compute profile with the kernel profile's gemm.* parameters, for the library that runs
    the scenario's expert weights (`topologies/kernels/libraries/gemm.yaml`, simulate); the GPU's
    own compute profile where the kernel profile fits no gemm.* parameter (`spec`, or a profile
    that moves only other parameters)."""
    from moesim.core.loader import data_root, read_yaml
    from moesim.costs.gemm_kernels import fitted_compute_profile
    kp = kernel_profile(sc)
    if not any(name.startswith("gemm.") for name in kp.fitted):
        return prof
    rules, _ = read_yaml(data_root() / "topologies" / "kernels" / "libraries" / "gemm.yaml")
    block = "block" in (sc.input.dtypes.weights or "")
    library = rules["simulate"]["block_fp8" if block else "default"]
    return fitted_compute_profile(prof, sc.system.gpu.arch.value, kp.values(), library, kp.name)


def hardware_for(sc: Scenario) -> tuple:
    """(gpu spec, compute profile, link overrides) for the scenario, calibrated when the scenario
    names a profile (`runtime.profile`, or `--profile`)."""
    gpu = sc.system.gpu
    prof = gemm_fit(sc, load_compute_profile(gpu.id))
    name = calibration_name(sc)
    if not name:
        return gpu, prof, ()
    from moesim.calibration.profile import apply_to_compute, apply_to_gpu, link_efficiency_overrides, load_calibration
    cal = load_calibration(name)
    if cal.gpu != gpu.id:
        raise MoesimError(f"profile is calibrated for {cal.gpu}, the scenario runs on {gpu.id}",
                          field="runtime.profile", fix="calibrate on this GPU or pick the matching system")
    return apply_to_gpu(gpu, cal), apply_to_compute(prof, cal), tuple(sorted(link_efficiency_overrides(cal).items()))


def metric_bands(sc: Scenario, metrics: dict, kind: str) -> dict:
    """Error bars of the headline metrics (moesim.calibration.uncertainty), with what they rest on."""
    from moesim.calibration.uncertainty import bands, load_residuals
    rms = 0.0
    if calibration_name(sc):
        from moesim.calibration.profile import load_calibration, profile_rms
        rms = profile_rms(load_calibration(calibration_name(sc)))
    return bands(metrics, kind, calibration_rms=rms, residuals=load_residuals())


def provenance(sc: Scenario) -> dict:
    """What a reader needs to reproduce the numbers: code version and the data behind them."""
    from moesim.core.result import code_version
    profile = calibration_name(sc) or None
    return {"code": code_version(), "scenario": sc.input.name, "calibration_profile": profile,
            "kernel_profile": kernel_profile(sc).name,
            "rates": f"calibrated: {profile}" if profile
            else "spec rates x efficiencies of topologies/compute and the system's published microbenchmarks"}
