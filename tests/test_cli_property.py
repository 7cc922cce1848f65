"""Property-based test of the bad-input contract of the command line (hypothesis).

Contract (README, "Flags override ..."): whatever a user types or feeds in, a command either exits 0
with a result, or exits 2 with exactly ONE line on stderr that starts with `error:` (and nothing on
stdout); never a traceback; and when it was given an output path (`--trace`, `--report`, `-o`,
`--write-residuals`, `--cache`) and failed, no file (and no temporary file) is left at that path.

Generated inputs, per command (memory, route, simulate, comm, whatif, validate, import-hf, report,
plan): flag values (integers with 0, negatives and huge values; names from `moesim models --json`,
`moesim systems --json` and workloads/dtypes.yaml mixed with near-misses and garbage), files
(scenario YAMLs mutated from the shipped scenarios, validation cases files, JSON report inputs, HF
config.json files from tests/test_hf_import.py, search spaces; each mutated by dropping a key,
giving a wrong type, a negative or huge number, an unknown key, or replaced by malformed YAML/JSON,
binary bytes or an empty file), and output paths (fine, in a missing folder, under a path whose
parent is a file, with a bad suffix, a folder).

Each call runs in a forked child of the test process (the imports and compiled Numba kernels are
shared; nothing leaks back), with an address-space limit (a runaway allocation becomes a
MemoryError, reported as a failure instead of taking the machine down) and a wall-clock limit
(a hang or a minutes-long run is reported as a failure, not a stuck suite).

Every kind of violation raises its own exception class (named after the command, the kind and,
for a crash, the exception type and the moesim frame that raised it), so hypothesis reports each
distinct failure separately, each with its minimal input; the command line and the generated
files are printed with it (`note`). Most inputs are valid but for one "fault dimension" (flags,
scenario file, output paths, ...), so the checks behind the first one are reached too.

Hypothesis stops generating soon after it finds a failure; to list every failure at once, run
with MOESIM_CLI_SURVEY=FILE (violations are written to FILE as JSON lines instead of failing) and
optionally MOESIM_CLI_EXAMPLES_SCALE=3 (three times the examples).

Click's own usage errors (a non-integer for an integer option, an unknown option, a folder where
a file is expected) are checked by a plain parametrized test at the end of this file.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import resource
import select
import shlex
import signal
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from moesim.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(tempfile.mkdtemp(prefix="moesim-cli-property-"))
MEMORY_HEADROOM = 2 << 30          # bytes of address space a call may add (legit calls stay under 1 GiB)
HANG_S = {"memory": 20, "comm": 20, "import-hf": 20, "route": 30, "simulate": 30, "validate": 30,
          "report": 45, "whatif": 45, "plan": 45}
HANG_S_AFTER_FIRST = 6            # once a command hung, later calls (shrinking) wait less
# Survey mode, to list every failure at once: MOESIM_CLI_SURVEY=FILE records each violation in FILE
# (JSON lines) instead of failing, so hypothesis runs its whole budget (it otherwise stops generating
# soon after the first failure); MOESIM_CLI_EXAMPLES_SCALE multiplies every max_examples.
SURVEY = os.environ.get("MOESIM_CLI_SURVEY")
SCALE = float(os.environ.get("MOESIM_CLI_EXAMPLES_SCALE", "1"))


def _settings(n: int):
    return settings(derandomize=True, database=None, deadline=None, max_examples=max(1, int(n * SCALE)), print_blob=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


def note(text: str) -> None:
    """hypothesis.note inside a hypothesis test (printed with the failing example); else nothing."""
    if hypothesis.currently_in_test_context():
        hypothesis.note(text)


def event(text: str) -> None:
    if hypothesis.currently_in_test_context():
        hypothesis.event(text)


# ------------------------------------------------------------------------------------ running
def _cli_json(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def run_cli(args: list[str], *, cwd: Path, timeout: float) -> dict:
    """Run `moesim ARGS` with CliRunner in a forked child; the outcome as a dict.

    The child answers with a length-prefixed JSON message, so a process it left behind (holding
    the pipe open) cannot make a finished call look like a hang; its process group is killed after
    the answer (or at the timeout)."""
    read_fd, write_fd = os.pipe()
    limit = _vm_size() + MEMORY_HEADROOM
    pid = os.fork()
    if pid == 0:                                   # child
        code = 0
        try:
            os.close(read_fd)
            os.setpgid(0, 0)
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard == resource.RLIM_INFINITY or hard > limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            os.chdir(cwd)
            result = CliRunner().invoke(main, args, catch_exceptions=True)
            exc = result.exception
            crashed = exc is not None and not isinstance(exc, SystemExit)
            out = {"exit_code": result.exit_code, "stdout": result.stdout[-6000:],
                   "stdout_len": len(result.stdout), "stderr": result.stderr[-6000:],
                   "traceback_printed": "Traceback" in result.stdout or "Traceback" in result.stderr,
                   "exception": f"{type(exc).__name__}: {exc}"[:2000] if crashed else None,
                   "exception_type": type(exc).__name__ if crashed else None,
                   "traceback": "".join(traceback.format_exception(*result.exc_info))[-6000:] if crashed else None,
                   "frame": _moesim_frame(result.exc_info[2]) if crashed else None}
        except BaseException as harness:           # noqa: BLE001 - reported, never raised in the child
            out = {"harness_error": f"{type(harness).__name__}: {harness}",
                   "traceback": traceback.format_exc()[-6000:]}
            code = 1
        try:
            data = json.dumps(out).encode()
            data = len(data).to_bytes(8, "little") + data
            view = memoryview(data)
            while view:
                n = os.write(write_fd, view)
                view = view[n:]
        finally:
            os._exit(code)
    os.close(write_fd)
    buf, need, deadline, timed_out, exited = b"", None, time.monotonic() + timeout, False, False
    try:
        while need is None or len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break                          # EOF: the child ended (answered or not)
                buf += chunk
                if need is None and len(buf) >= 8:
                    need = 8 + int.from_bytes(buf[:8], "little")
            elif not exited and os.waitpid(pid, os.WNOHANG)[0] == pid:
                exited = True                      # ended; a grandchild may still hold the pipe
                deadline = min(deadline, time.monotonic() + 2)
    finally:
        os.close(read_fd)
        try:
            os.killpg(pid, signal.SIGKILL)         # the call's leftovers, or the hung call itself
        except (ProcessLookupError, PermissionError):
            pass
        if not exited:
            os.waitpid(pid, 0)
    if need is not None and len(buf) >= need:
        return json.loads(buf[8:need])
    if timed_out and not exited:
        return {"timeout": timeout}
    return {"died": "the call ended without an answer (killed by a signal, or os._exit inside the command)"}


def _moesim_frame(tb) -> str | None:
    """file:function of the innermost frame inside the moesim package (where the crash happened)."""
    where = None
    for frame in traceback.extract_tb(tb):
        if "/moesim/" in frame.filename and "/tests/" not in frame.filename:
            rel = frame.filename[frame.filename.rindex("/moesim/") + 1:]
            where = f"{rel}:{frame.name}"
    return where


@pytest.fixture(scope="module", autouse=True)
def warm_parent():
    """Import and compile once in this process, so every forked call starts warm (the Numba
    kernels, topology, plots and templates are shared by fork instead of loaded per call)."""
    cwd = FIXTURES / "warm"
    cwd.mkdir(exist_ok=True)
    small = ["--model", "mixtral-8x7b", "--gpus", "8", "--ep", "8"]
    for args in (["memory"], ["route"], ["route", *small], ["route", "--skew", "zipf:1.0", "--placement", "eplb:32"],
                 ["simulate"], ["simulate", *small, "--overlap", "two_batch"], ["comm"], ["comm", "--ep"],
                 ["comm", "--bytes", "1K:8G", "--op", "all_to_all"], ["models"], ["systems"],
                 ["simulate", *small, "--report", str(cwd / "r.html")], ["simulate", *small, "--report", str(cwd / "r.pdf")]):
        CliRunner().invoke(main, args)            # outcomes are checked by the tests, not here
    try:
        report_inputs()
    except AssertionError:
        pass
    yield


# ------------------------------------------------------------------------- violation classes
class ContractViolation(AssertionError):
    """The CLI broke the bad-input contract (subclasses: one per command and kind of failure)."""


_VIOLATIONS: dict[str, type] = {}


def violation(command: str, kind: str, message: str) -> ContractViolation:
    key = f"{command}: {kind}"
    if key not in _VIOLATIONS:
        name = re.sub(r"\W+", "_", key).strip("_")
        _VIOLATIONS[key] = type(name, (ContractViolation,), {"__qualname__": f"ContractViolation[{key}]"})
    return _VIOLATIONS[key](f"[{key}]\n{message}")


_HUNG: set[str] = set()


def check(command: str, args: list[str], *, cwd: Path, outputs: dict[str, tuple[str, str]] | None = None) -> dict:
    """Run and check the contract. `outputs`: option -> (path, kind of path generated)."""
    line = "moesim " + shlex.join(args)
    note(f"$ {line}")
    key = _verdict_key(args, cwd)
    if key in _VERDICTS:                # the same call again (common while shrinking): same verdict
        r, found = _VERDICTS[key]
    else:
        timeout = HANG_S_AFTER_FIRST if command in _HUNG else HANG_S[command]
        r = run_cli(args, cwd=cwd, timeout=timeout)
        found = first_violation(command, r, outputs or {})
        _VERDICTS[key] = (r, found)
    if found:
        report_violation(command, found[0], f"$ {line}\n" + found[1])
    return r


_VERDICTS: dict[tuple, tuple] = {}


def _verdict_key(args: list[str], cwd: Path) -> tuple:
    """The call as its outcome depends on it: arguments with the per-call folder factored out, and
    the names and contents of the files in that folder (moesim is deterministic: seed 0)."""
    files = tuple(sorted((str(p.relative_to(cwd)), hashlib.sha1(p.read_bytes()).hexdigest())
                         for p in cwd.rglob("*") if p.is_file()))
    return tuple(a.replace(str(cwd), "<cwd>") for a in args), files


def report_violation(command: str, kind: str, message: str) -> None:
    """Raise (the test fails and hypothesis shrinks it), or in survey mode record it and go on."""
    if SURVEY:
        with open(SURVEY, "a") as handle:
            handle.write(json.dumps({"key": f"{command}: {kind}", "message": message}) + "\n")
        return
    raise violation(command, kind, message)


def first_violation(command: str, r: dict, outputs: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(kind, message) of the first way the outcome `r` breaks the contract, or None."""
    if "timeout" in r:
        _HUNG.add(command)
        return "hang", f"no answer within {r['timeout']} s (hang or minutes-long run; huge sizes need a size guard)"
    if "died" in r:
        return "child died", r["died"]
    if "harness_error" in r:
        return "harness", r["harness_error"] + "\n" + r["traceback"]
    detail = f"exit code {r['exit_code']}\nstderr: {r['stderr'][-1500:]!r}\nstdout: {r['stdout'][-800:]!r}"
    if r["exception"]:
        return f"crash {r['exception_type']} at {r['frame']}", detail + "\n" + r["traceback"][-3000:]
    if r["traceback_printed"]:
        return "traceback printed", detail
    code = r["exit_code"]
    event(f"exit {code}")
    if code == 2:   # which field the errors name: shows in --hypothesis-show-statistics, to tune the inputs
        event("error: " + r["stderr"].strip()[7:].replace(str(FIXTURES), "<tmp>")[:70])
    if code not in (0, 2):
        return f"exit code {code}", detail
    if code == 0 and not r["stdout"].strip():
        return "exit 0 without a result", detail
    if code == 2:
        lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
        if "Usage:" in r["stderr"] and any(ln.startswith("Error:") for ln in lines):
            return "click usage error (not one error: line)", detail
        if len(lines) != 1 or not lines[0].startswith("error:"):
            return f"exit 2 with {len(lines)} stderr line(s), not one 'error:' line", detail
        if r["stdout"].strip():
            return "exit 2 with output on stdout", detail
    for option, (path, kind) in outputs.items():
        p = Path(path)
        leftovers = sorted(x.name for x in p.parent.glob(f".{p.name}.*")) if p.parent.is_dir() else []
        if leftovers:
            return f"temporary file left beside {option}", detail + f"\nleft: {leftovers}"
        if code != 0 and kind == "fine-existing" and (not p.is_file() or p.read_text() != "old\n"):
            return f"failed but replaced the existing {option} file", detail
        if code != 0 and kind not in ("folder", "fine-existing") and p.exists():
            return f"failed but {option} file exists", detail + f"\n{path} exists"
        if code == 0 and kind in ("fine", "fine-existing") and not p.exists():
            return f"exit 0 but no {option} file", detail
        if code == 0 and kind in ("missing-folder", "parent-is-file"):
            return f"exit 0 with an unwritable {option} path ({kind})", detail
    return None


_CALLS = [0]


def workdir() -> Path:
    _CALLS[0] += 1
    d = FIXTURES / "calls" / f"{_CALLS[0]:05d}"
    d.mkdir(parents=True)
    return d


def output_path(kind: str, cwd: Path, suffix: str, name: str = "out") -> str:
    """A path of the given kind for an output option."""
    if kind == "fine":
        return str(cwd / f"{name}{suffix}")
    if kind == "fine-existing":                      # replaces an older file of that name
        p = cwd / f"{name}-old{suffix}"
        p.write_text("old\n")
        return str(p)
    if kind == "missing-folder":
        return str(cwd / "no-such-folder" / f"{name}{suffix}")
    if kind == "parent-is-file":
        (cwd / "a-file").write_text("x\n")
        return str(cwd / "a-file" / f"{name}{suffix}")
    if kind == "bad-suffix":
        return str(cwd / f"{name}.txt")
    if kind == "no-suffix":
        return str(cwd / name)
    if kind == "folder":
        (cwd / "a-folder").mkdir(exist_ok=True)
        return str(cwd / "a-folder")
    raise ValueError(kind)


BAD_OUTPUT_KINDS = ["missing-folder", "parent-is-file", "bad-suffix", "no-suffix", "folder"]
# A bad output path stops a command before any work, so bad kinds are kept to about a third of the
# paths given: the work behind a good path (and whether a failure there leaves a file) gets tested.
OUT_KINDS = st.sampled_from(["fine"] * 8 + ["fine-existing"] * 2 + BAD_OUTPUT_KINDS)


def optional_output():
    """No output option (most often), or an output path of some kind."""
    return st.one_of(st.just(None), st.just(None), OUT_KINDS)


# ------------------------------------------------------------------------------ value pools
MODELS = [row["id"] for row in _cli_json("models", "--json")]
SYSTEMS = [row["id"] for row in _cli_json("systems", "--json")]
_DTYPE_FILE = yaml.safe_load((REPO / "workloads" / "dtypes.yaml").read_text())
DTYPES = sorted(_DTYPE_FILE["dtypes"]) + sorted(_DTYPE_FILE.get("aliases") or {})

GARBAGE = ["", " ", "-", "null", "x" * 300, "ß∂ƒ", "../../etc/passwd", "/nonexistent/file.yaml", "a:b:c", "%s%n"]
MODEL_MISSES = ["DeepSeek-V3", "deepseek-v3 ", "deepseek_v3", "deepseek-v", "mixtral", "mixtral-8x7b.yaml",
                "workloads/models", str(REPO / "workloads" / "models"),
                str(REPO / "workloads" / "models" / "mixtral-8x7b.yaml")]
SYSTEM_MISSES = ["DGX-H100", "dgx_h100", "dgx-h10", "h100", "dgx-h100 ", "nvl72",
                 str(REPO / "topologies" / "systems" / "dgx-h100.yaml"), str(REPO / "topologies" / "systems")]
DTYPE_MISSES = ["FP8", "fp4", "int8", "fp8_e5m2", "bfloat16", "fp 8", "mxfp", "fp32 "]

INTS = st.one_of(st.sampled_from([1, 2, 8, 16, 0, -1, -8, 3, 7, 64, 10**12, 10**8, 2**63]), st.integers(-2, 80))
BIG_INTS = st.sampled_from([1, 128, 4096, 65536, 0, -1, 7, 10**6, 10**8, 10**12, 2**63])
SKEWS = ["uniform", "zipf:1.0", "zipf:1.2", "dirichlet:0.5", "zipf:0", "zipf:-1", "zipf:abc", "zipf:", "zipf",
         "zipf:nan", "zipf:inf", "zipf:1e308", "dirichlet:0", "dirichlet:-0.5", "dirichlet:1e-300", "Uniform",
         "uniform:1", ":", "file:", "file:/nonexistent.csv", "trace:/nonexistent.npy"]
PLACEMENTS = ["contiguous", "round_robin", "eplb", "eplb:0", "eplb:8", "eplb:32", "eplb:64", "eplb:-1",
              "eplb:abc", "eplb:", "eplb:1000000000000", "EPLB", "random", "eplb:32:1", "round-robin"]


def _write_fixture(name: str, data: bytes | str) -> str:
    path = FIXTURES / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def _make_fixture_files() -> dict[str, list[str]]:
    import numpy as np
    out: dict[str, list[str]] = {"skew": [], "model": [], "system": [], "profile": []}
    # routing tables and traces (sized for mixtral-8x7b: 32 MoE layers, 8 experts, top-2)
    for name, text in [("empty.csv", ""), ("garbage.csv", "a,b\nc,d\n"), ("shape.csv", "1,2,3\n4,5,6\n"),
                       ("negative.csv", ",".join(["-1"] + ["1"] * 7) + "\n"), ("zeros.csv", ",".join(["0"] * 8)),
                       ("nan.csv", ",".join(["nan"] + ["1"] * 7)), ("good-mixtral.csv", ",".join(["1"] * 8))]:
        out["skew"].append("file:" + _write_fixture(name, text))
    arrays = {"empty-trace.npy": np.zeros((0, 2), dtype=np.int64), "float-trace.npy": np.zeros((16, 2)),
              "out-of-range-trace.npy": np.full((16, 2), 999, dtype=np.int64),
              "negative-trace.npy": np.full((16, 2), -1, dtype=np.int64),
              "good-mixtral-trace.npy": np.tile(np.arange(2, dtype=np.int64), (64, 1)),
              "table-3d.npy": np.ones((1, 8, 8)), "scalar.npy": np.array(3)}
    for name, arr in arrays.items():
        path = FIXTURES / name
        np.save(path, arr)
        out["skew"].append(("file:" if name.startswith("table") or name == "scalar.npy" else "trace:") + str(path))
    out["skew"].append("trace:" + _write_fixture("text.npy", "not numpy\n"))
    out["skew"].append("file:" + str(FIXTURES / "table-3d.npy").replace("table-3d", "scalar"))
    # broken model and system files
    model = yaml.safe_load((REPO / "workloads" / "models" / "mixtral-8x7b.yaml").read_text())
    out["model"] += [_write_fixture("model-empty.yaml", ""), _write_fixture("model-binary.yaml", b"\x00\xff\x10"),
                     _write_fixture("model-list.yaml", "- a\n- b\n")]
    for key in list(model)[:6]:
        broken = {k: v for k, v in model.items() if k != key}
        out["model"].append(_write_fixture(f"model-no-{key}.yaml", yaml.safe_dump(broken)))
    system = yaml.safe_load((REPO / "topologies" / "systems" / "dgx-h100.yaml").read_text())
    out["system"] += [_write_fixture("system-empty.yaml", ""), _write_fixture("system-text.yaml", "just text\n")]
    for key in list(system)[:5]:
        broken = {k: v for k, v in system.items() if k != key}
        out["system"].append(_write_fixture(f"system-no-{key}.yaml", yaml.safe_dump(broken)))
    profile = yaml.safe_load((REPO / "topologies" / "calibration" / "h100-sxm.yaml").read_text())
    out["profile"] += [_write_fixture("profile-empty.yaml", ""), _write_fixture("profile-bad.yaml", "gpu: [\n")]
    for key in list(profile)[:4]:
        broken = {k: v for k, v in profile.items() if k != key}
        out["profile"].append(_write_fixture(f"profile-no-{key}.yaml", yaml.safe_dump(broken)))
    return out


FIXTURE_FILES = _make_fixture_files()
MODEL_NAMES = st.sampled_from(MODELS + MODEL_MISSES + GARBAGE + FIXTURE_FILES["model"])
SYSTEM_NAMES = st.sampled_from(SYSTEMS + SYSTEM_MISSES + GARBAGE + FIXTURE_FILES["system"])
DTYPE_NAMES = st.sampled_from(DTYPES + DTYPE_MISSES + GARBAGE[:4])
SKEW_VALUES = st.sampled_from(SKEWS + FIXTURE_FILES["skew"])
PLACEMENT_VALUES = st.sampled_from(PLACEMENTS)
PROFILE_VALUES = st.sampled_from(["h100-sxm", "h200-sxm", "synthetic-dgx-h100", "nope", "", "h100-sxm.yaml",
                                  str(REPO / "topologies" / "calibration"), "/nonexistent/profile.yaml"]
                                 + FIXTURE_FILES["profile"])

SCENARIO_FLAGS = {
    "--model": MODEL_NAMES, "--system": SYSTEM_NAMES,
    "--gpus": INTS, "--tp": INTS, "--pp": INTS, "--dp": INTS, "--ep": INTS, "--etp": INTS,
    "--redundant-experts": INTS, "--weights-dtype": DTYPE_NAMES, "--expert-dtype": DTYPE_NAMES,
    "--kv-dtype": DTYPE_NAMES, "--batch": BIG_INTS, "--input-len": BIG_INTS, "--output-len": BIG_INTS,
}

LONG_NAME = "x" * 300                 # longer than a file name may be (255 bytes)
MIXTRAL_EP8 = {"--model": "mixtral-8x7b", "--gpus": 8, "--ep": 8}

# Valid starting points (small models and GPU counts first: simulate takes ~0.5-1 s a call).
BASES = [
    {"--model": "mixtral-8x7b", "--gpus": 8, "--ep": 8},
    {"--model": "mixtral-8x7b", "--gpus": 2, "--tp": 2, "--weights-dtype": "bf16", "--kv-dtype": "bf16"},
    {"--model": "deepseek-v2-lite", "--gpus": 8, "--ep": 8},
    {"--model": "olmoe-1b-7b", "--gpus": 1},
    {"--model": "qwen3-30b-a3b", "--system": "hgx-h200", "--gpus": 8, "--ep": 8},
    {"--model": "gpt-oss-20b", "--system": "hgx-b200", "--gpus": 2, "--ep": 2},
    {},                                                       # the built-in default (DeepSeek-V3 EP16)
    {"--model": "deepseek-v3", "--system": "gb200-nvl72", "--gpus": 72, "--ep": 72, "--redundant-experts": 32},
]


def flag_changes(pools: dict[str, st.SearchStrategy], min_size: int = 0, max_size: int = 3):
    keys = sorted(pools)
    return st.lists(st.sampled_from(keys).flatmap(lambda k: st.tuples(st.just(k), pools[k])),
                    min_size=min_size, max_size=max_size, unique_by=lambda kv: kv[0])


def flags_to_args(flags: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in flags.items():
        if value is True:
            args.append(key)
        elif value is not None and value is not False:
            args += [key, str(value)]
    return args


# ------------------------------------------------------------------------------ file mutations
WRONG_VALUES = ["abc", "", 1.5, -1, 0, 10**12, 2**64, None, True, [], {}, [1, 2], {"a": 1}, "16",
                float("inf"), float("nan"), -0.5, 1e308, "ß" * 3]
RAW_YAML = [b"", b"\n", b"model: [unclosed\n", b"model: deepseek-v3\n  gpus: 16\n", b"\tmodel: x\n", b"- a\n- b\n",
            b"null\n", b"42\n", b"'just a string'\n", b"model: deepseek-v3\nmodel: mixtral-8x7b\n",
            b"\xff\xfe\x00binary\x00\x01", b"---\nmodel: x\n---\nmodel: y\n", b"key: !!python/object:os.system ls\n",
            b"a: &a [*a]\n", b"gpus: 1e400\n", b"{{{{", b":\n", b"\x00" * 16]
UNKNOWN_KEYS = ["bogus", "gpu", "paralel", "batch_size", "Model", "0"]


def key_paths(data: Any, prefix: tuple = (), depth: int = 3) -> list[tuple]:
    """Paths of every key (dict keys; list item 0) down to `depth` levels."""
    out = []
    if depth == 0:
        return out
    if isinstance(data, dict):
        for key, value in data.items():
            out.append(prefix + (key,))
            out += key_paths(value, prefix + (key,), depth - 1)
    elif isinstance(data, list) and data:
        out.append(prefix + (0,))
        out += key_paths(data[0], prefix + (0,), depth - 1)
    return out


def dict_paths(data: Any, prefix: tuple = (), depth: int = 3) -> list[tuple]:
    out = [prefix] if isinstance(data, dict) else []
    if depth and isinstance(data, dict):
        for key, value in data.items():
            out += dict_paths(value, prefix + (key,), depth - 1)
    elif depth and isinstance(data, list) and data:
        out += dict_paths(data[0], prefix + (0,), depth - 1)
    return out


def _get(data, path):
    for key in path:
        data = data[key]
    return data


def mutation(base: Any, *, max_depth: int = 3, valid_weight: int = 1):
    """A strategy of mutation specs for a dict/list document `base`: printable tuples."""
    paths = key_paths(base, depth=max_depth)
    containers = dict_paths(base, depth=max_depth)
    return st.one_of(
        *[st.just(("valid",))] * valid_weight,
        st.tuples(st.just("drop"), st.sampled_from(paths)),
        st.tuples(st.just("set"), st.sampled_from(paths), st.sampled_from(WRONG_VALUES)),
        st.tuples(st.just("unknown-key"), st.sampled_from(containers), st.sampled_from(UNKNOWN_KEYS)),
        st.tuples(st.just("raw"), st.one_of(st.sampled_from(RAW_YAML), st.binary(min_size=1, max_size=48))),
    )


def apply_mutation(base: Any, spec: tuple) -> Any:
    """The mutated document (or raw bytes for a 'raw' spec)."""
    if spec[0] == "raw":
        return spec[1]
    data = copy.deepcopy(base)
    if spec[0] == "drop":
        parent = _get(data, spec[1][:-1])
        del parent[spec[1][-1]]
    elif spec[0] == "set":
        parent = _get(data, spec[1][:-1])
        parent[spec[1][-1]] = copy.deepcopy(spec[2])
    elif spec[0] == "unknown-key":
        _get(data, spec[1])[spec[2]] = 1
    return data


def write_doc(path: Path, doc: Any, fmt: str = "yaml") -> Path:
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    elif fmt == "json":
        path.write_text(json.dumps(doc, indent=1, allow_nan=True))
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    shown = path.read_bytes()[:600]
    note(f"{path.name} ({path.stat().st_size} bytes): {shown!r}")
    return path


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


SCENARIO_BASES = {
    "default": _load_yaml(REPO / "workloads" / "scenarios" / "default.yaml"),
    "small-decode": {"name": "small", "model": "mixtral-8x7b", "system": "dgx-h100", "gpus": 8,
                     "parallel": {"tp": 1, "dp": 8, "ep": 8, "pp": 1}, "experts": {"redundant": 0},
                     "dtypes": {"weights": "bf16", "kv_cache": "bf16", "activations": "bf16"},
                     "workload": {"kind": "serving", "phase": "decode", "batch": 16, "input_len": 1024,
                                  "output_len": 256},
                     "runtime": {"framework": "sglang"}, "seed": 0},
    "small-prefill": {"name": "small-prefill", "model": "mixtral-8x7b", "system": "dgx-h100", "gpus": 8,
                      "parallel": {"tp": 1, "dp": 8, "ep": 8, "pp": 1},
                      "dtypes": {"weights": "bf16", "kv_cache": "bf16"},
                      "workload": {"kind": "serving", "phase": "prefill", "batch": 1, "input_len": 1024,
                                   "output_len": 256},
                      "runtime": {"framework": "sglang"}},
    "small-training": {"name": "small-training", "model": "olmoe-1b-7b", "system": "dgx-h100", "gpus": 8,
                       "parallel": {"tp": 1, "ep": 4, "pp": 2},
                       "dtypes": {"weights": "bf16", "kv_cache": "bf16"},
                       "workload": {"kind": "training", "seq_len": 2048, "micro_batch": 1, "global_batch": 16,
                                    "recompute": "selective", "zero_stage": 1},
                       "runtime": {"framework": "megatron"}},
}


@st.composite
def scenario_specs(draw, bases=tuple(SCENARIO_BASES)):
    name = draw(st.sampled_from(bases))
    return (name,) + draw(mutation(SCENARIO_BASES[name], valid_weight=2))


def write_scenario(spec: tuple, cwd: Path, name: str = "scenario.yaml") -> str:
    doc = apply_mutation(SCENARIO_BASES[spec[0]], spec[1:])
    return str(write_doc(cwd / name, doc))


def faults(*dims: str):
    """Which input dimensions draw from the full pools (valid, near-miss and garbage values); the
    others draw valid values only: none (a valid run) or one dimension 40 % of the time each, so
    that most inputs reach the code behind the first check; all of them 20 %."""
    return st.one_of(st.just(()), st.just(()), st.tuples(st.sampled_from(dims)), st.tuples(st.sampled_from(dims)),
                     st.just(tuple(dims)))


def pick(draw, bad: tuple, dim: str, valid: st.SearchStrategy, full: st.SearchStrategy):
    return draw(full if dim in bad else valid)


VALID_SCENARIO_FLAGS = {
    "--batch": st.integers(1, 256), "--input-len": st.integers(1, 4096), "--output-len": st.integers(1, 2048),
    "--weights-dtype": st.sampled_from(["bf16", "fp8"]), "--kv-dtype": st.sampled_from(["bf16", "fp8"]),
    "--system": st.sampled_from(["dgx-h100", "hgx-h200", "hgx-b200", "dgx-h800"]),
}
VALID_SCENARIO = st.sampled_from([None, None, ("small-decode", "valid"), ("small-training", "valid"),
                                  ("default", "valid")])
VALID_SKEWS = st.sampled_from(["uniform", "zipf:1.0", "zipf:1.2", "dirichlet:0.5"])
VALID_PLACEMENTS = st.sampled_from([None, "contiguous", "round_robin", "eplb"])
VALID_OUTPUT = st.sampled_from([None, None, "fine", "fine-existing"])


def scenario_args(draw, bad: tuple, *, bases=tuple(SCENARIO_BASES)):
    """(scenario spec or None, flags dict) for memory / route / simulate / comm --ep."""
    spec = pick(draw, bad, "file", VALID_SCENARIO, st.one_of(st.none(), scenario_specs(bases)))
    flags = dict(draw(st.sampled_from(BASES))) if spec is None or draw(st.booleans()) else {}
    if "flags" in bad:
        n = draw(st.sampled_from([1, 1, 2, 3]))
        flags.update(dict(draw(flag_changes(SCENARIO_FLAGS, min_size=n, max_size=n))))
    else:
        training = spec is not None and spec[0] == "small-training" and "--model" not in flags
        pools = {k: v for k, v in VALID_SCENARIO_FLAGS.items()
                 if not (training and k in ("--batch", "--input-len", "--output-len"))}   # serving-only fields
        flags.update(dict(draw(flag_changes(pools, max_size=2))))
    return spec, flags


def main_model(spec: tuple | None, flags: dict) -> str:
    """The model a scenario spec + flags run (for pairing a valid prefill pool with it)."""
    if "--model" in flags:
        return str(flags["--model"])
    return SCENARIO_BASES[spec[0]]["model"] if spec and spec[0] in SCENARIO_BASES else "deepseek-v3"


# ---------------------------------------------------------------------------------- memory
@st.composite
def memory_inputs(draw):
    bad = draw(faults("flags", "file"))
    spec, flags = scenario_args(draw, bad)
    flags["--json"] = draw(st.booleans())
    return spec, flags


@_settings(120)
@given(memory_inputs())
def test_memory(inp):
    spec, flags = inp
    cwd = workdir()
    args = ["memory"] + ([write_scenario(spec, cwd)] if spec else []) + flags_to_args(flags)
    check("memory", args, cwd=cwd)


# ----------------------------------------------------------------------------------- route
ROUTE_FLAGS = {"--tokens": BIG_INTS, "--skew": SKEW_VALUES, "--placement": PLACEMENT_VALUES,
               "--layer": st.sampled_from([0, 1, 26, 31, 57, 58, 60, 1000, -1, 10**12]),
               "--node-limit": st.sampled_from([1, 2, 4, 0, -1, 10**12]),
               "--capacity-factor": st.sampled_from([1.0, 1.25, 0, -1, "nan", "inf", 1e-9, 1e12]),
               "--dispatch-dtype": st.sampled_from(["fp8", "bf16", "fp4", "", "FP8"])}
VALID_ROUTE_FLAGS = {"--tokens": st.integers(1, 65536), "--skew": VALID_SKEWS, "--placement": VALID_PLACEMENTS,
                     "--layer": st.integers(0, 3), "--capacity-factor": st.sampled_from([1.0, 1.25, 2.0]),
                     "--dispatch-dtype": st.sampled_from(["fp8", "bf16"])}


@st.composite
def route_inputs(draw):
    bad = draw(faults("flags", "file", "route-flags"))
    spec, flags = scenario_args(draw, bad)
    flags.update(dict(draw(flag_changes(ROUTE_FLAGS if "route-flags" in bad else VALID_ROUTE_FLAGS,
                                        min_size=1 if "route-flags" in bad else 0))))
    flags["--json"] = draw(st.booleans())
    return spec, flags


@_settings(80)
@given(route_inputs())
def test_route(inp):
    spec, flags = inp
    cwd = workdir()
    args = ["route"] + ([write_scenario(spec, cwd)] if spec else []) + flags_to_args(flags)
    check("route", args, cwd=cwd)


# -------------------------------------------------------------------------------- simulate
SIMULATE_FLAGS = {"--skew": SKEW_VALUES, "--placement": PLACEMENT_VALUES,
                  "--overlap": st.sampled_from(["none", "two_batch"]), "--profile": PROFILE_VALUES}
VALID_SIMULATE_FLAGS = {"--skew": VALID_SKEWS, "--placement": VALID_PLACEMENTS,
                        "--overlap": st.sampled_from(["none", "two_batch"]),
                        "--profile": st.sampled_from(["h100-sxm", "h200-sxm"])}


@st.composite
def simulate_inputs(draw):
    bad = draw(faults("flags", "file", "sim-flags", "prefill", "outputs"))
    spec, flags = scenario_args(draw, bad)
    flags.update(dict(draw(flag_changes(SIMULATE_FLAGS if "sim-flags" in bad else VALID_SIMULATE_FLAGS,
                                        min_size=1 if "sim-flags" in bad else 0, max_size=2))))
    prefill = pick(draw, bad, "prefill", st.sampled_from([None, None, None, ("small-prefill", "valid")]),
                   scenario_specs(("small-prefill", "small-decode")))
    if "prefill" not in bad and main_model(spec, flags) != "mixtral-8x7b":
        prefill = None                      # a valid pair serves one model (the prefill base is Mixtral)
    trace = pick(draw, bad, "outputs", VALID_OUTPUT, optional_output())
    report = pick(draw, bad, "outputs", st.sampled_from([None, None, None, "fine"]), optional_output())
    flags["--json"] = draw(st.booleans())
    return spec, flags, prefill, trace, report


@_settings(50)
@given(simulate_inputs())
def test_simulate(inp):
    spec, flags, prefill, trace, report = inp
    cwd = workdir()
    args = ["simulate"] + ([write_scenario(spec, cwd)] if spec else []) + flags_to_args(flags)
    outputs = {}
    if prefill:
        args += ["--prefill", write_scenario(prefill, cwd, "prefill.yaml")]
    if trace:
        outputs["--trace"] = (output_path(trace, cwd, ".json", "trace"), trace)
        args += ["--trace", outputs["--trace"][0]]
    if report:
        outputs["--report"] = (output_path(report, cwd, ".html", "report"), report)
        args += ["--report", outputs["--report"][0]]
    check("simulate", args, cwd=cwd, outputs=outputs)


# ------------------------------------------------------------------------------------ comm
BYTES = st.sampled_from(["1K", "1M", "64M", "1G", "8G", "1K:8G", "1M:64M", "0", "-1M", "1X", "8G:1K", "1e12",
                         "1000000000000", "1P", "1T", "1E", ":", "1K:", ":8G", "", "1.5M", "nan", "1K:1K",
                         "1:1000000000000000000", "99999999999999999999G"])
OPS = st.sampled_from(["all_to_all", "all_reduce", "all_gather", "reduce_scatter", "send_recv"])


@st.composite
def comm_inputs(draw):
    if draw(st.integers(0, 2)) == 0:       # --ep mode: one MoE layer's dispatch/combine
        bad = draw(faults("gpus", "skew", "placement", "tokens", "system", "file"))
        flags = {"--ep": True,
                 "--gpus": pick(draw, bad, "gpus", st.sampled_from([None, 8, 16, 64]), INTS),
                 "--skew": pick(draw, bad, "skew", VALID_SKEWS, SKEW_VALUES),
                 "--placement": pick(draw, bad, "placement", VALID_PLACEMENTS, PLACEMENT_VALUES),
                 "--tokens": pick(draw, bad, "tokens", st.sampled_from([None, 128, 4096]), BIG_INTS),
                 "--system": pick(draw, bad, "system", st.sampled_from([None] + SYSTEMS), SYSTEM_NAMES)}
        spec = pick(draw, bad, "file", st.sampled_from([None, ("default", "valid")]),
                    st.one_of(st.none(), scenario_specs()))
        flags["--json"] = draw(st.booleans())
        return spec, flags
    bad = draw(faults("system", "gpus", "bytes", "algo"))
    flags = {"--system": pick(draw, bad, "system", st.sampled_from(SYSTEMS), SYSTEM_NAMES),
             "--gpus": pick(draw, bad, "gpus", st.sampled_from([2, 8, 16, 72]), INTS),
             "--op": draw(OPS),
             "--bytes": pick(draw, bad, "bytes", st.sampled_from(["1M", "1G", "1K:8G", "64M:1G"]), BYTES),
             "--algo": pick(draw, bad, "algo", st.none(),
                            st.sampled_from(["ring", "nvls", "direct", "p2p", "tree", "", "RING"]))}
    flags["--json"] = draw(st.booleans())
    return None, flags


@_settings(80)
@given(comm_inputs())
def test_comm(inp):
    spec, flags = inp
    cwd = workdir()
    args = ["comm"] + flags_to_args(flags)
    if spec:
        args += ["--scenario", write_scenario(spec, cwd)]
    check("comm", args, cwd=cwd)


# ---------------------------------------------------------------------------------- whatif
VALID_SETS = ["system.nvlink_GBps=900", "system.nic_Gbps=800", "workload.batch=32", "skew=zipf:1.2",
              "overlap=two_batch", "placement=eplb", "gpus=16;parallel.ep=8", "system.oversubscription=2"]
SETS = VALID_SETS + [
    "nope", "=", "x=1", "workload.batch=-1", "workload.batch=abc", "workload.batch=0",
    "workload.batch=1000000000000", "gpus=0", "system.nic_Gbps=-800", "system.nic_Gbps=0",
    "system.nvlink_GBps=abc", "a.b.c=1", "system.gpu.hbm_capacity_bytes=1", "model=deepseek-v2-lite",
    "system=hgx-h200", "skew=bogus", "overlap=three", "placement=eplb:-1", ";", "workload.batch=32;",
    "parallel.ep=3", "seed=-1", "workload=1", "system.nvlink_GBps=1e-300", "system.nvlink_GBps=inf",
    "system.nvlink_GBps=nan", "gpus=1000000000000;parallel.ep=8", "system.nvlink_GBps=1e300"]


@st.composite
def whatif_inputs(draw):
    bad = draw(faults("file", "sets"))
    spec = pick(draw, bad, "file", st.sampled_from([("small-decode", "valid"), ("small-training", "valid")]),
                scenario_specs(("small-decode", "small-training")))
    sets = pick(draw, bad, "sets", st.lists(st.sampled_from(VALID_SETS), min_size=1, max_size=3),
                st.lists(st.sampled_from(SETS), max_size=3))
    return spec, sets, draw(st.booleans())


@_settings(25)
@given(whatif_inputs())
def test_whatif(inp):
    spec, sets, as_json = inp
    cwd = workdir()
    args = ["whatif", write_scenario(spec, cwd)]
    for s in sets:
        args += ["--set", s]
    if as_json:
        args.append("--json")
    check("whatif", args, cwd=cwd)


# -------------------------------------------------------------------------------- validate
def _pick_cases() -> dict:
    data = yaml.load((REPO / "validation" / "cases.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    picked, seen = [], set()
    for case in data["cases"]:
        if case["what"] in ("memory", "gemm", "collective", "memcpy", "grouped_gemm") and case["what"] not in seen:
            seen.add(case["what"])
            picked.append(case)
    return {"cases": picked}


CASES_BASE = _pick_cases()
COLLECTIVE_CASE = next(i for i, c in enumerate(CASES_BASE["cases"]) if c["what"] == "collective")


@st.composite
def cases_specs(draw, valid: bool = False):
    keep = draw(st.lists(st.integers(0, len(CASES_BASE["cases"]) - 1), min_size=1, max_size=3, unique=True))
    if valid:
        return tuple(sorted(keep)), None, ("valid",)
    base = {"cases": [CASES_BASE["cases"][i] for i in sorted(keep)]}
    special = draw(st.sampled_from([None, None, None, "empty-list", "no-cases-key", "top-level-list",
                                    "duplicate-ids", "measured-zero"]))
    return tuple(sorted(keep)), special, draw(mutation(base, max_depth=4))


def write_cases(spec: tuple, cwd: Path) -> str:
    keep, special, mut = spec
    base = {"cases": [CASES_BASE["cases"][i] for i in keep]}
    doc = apply_mutation(base, mut)
    if special == "empty-list":
        doc = {"cases": []}
    elif special == "no-cases-key":
        doc = {"tables": {}}
    elif special == "top-level-list":
        doc = base["cases"]
    elif special == "duplicate-ids":
        doc = {"cases": base["cases"] * 2}
    elif special == "measured-zero":
        doc = copy.deepcopy(base)
        doc["cases"][0]["measured"] = 0
    return str(write_doc(cwd / "cases.yaml", doc))


@st.composite
def validate_inputs(draw):
    bad = draw(faults("cases", "profiles", "outputs"))
    return (pick(draw, bad, "cases", cases_specs(valid=True), cases_specs()),
            pick(draw, bad, "profiles", st.lists(st.sampled_from(["h100-sxm", "h200-sxm"]), max_size=2, unique=True),
                 st.lists(PROFILE_VALUES, max_size=2)),
            pick(draw, bad, "outputs", VALID_OUTPUT, optional_output()),
            pick(draw, bad, "outputs", VALID_OUTPUT, optional_output()), draw(st.booleans()))


@_settings(40)
@given(validate_inputs())
def test_validate(inp):
    spec, profiles, report, residuals, as_json = inp
    cwd = workdir()
    args = ["validate", "--cases", write_cases(spec, cwd)]
    for p in profiles:
        args += ["--profile", p]
    outputs = {}
    if report:
        outputs["--report"] = (output_path(report, cwd, ".png", "parity"), report)
        args += ["--report", outputs["--report"][0]]
    if residuals:
        outputs["--write-residuals"] = (output_path(residuals, cwd, ".yaml", "residuals"), residuals)
        args += ["--write-residuals", outputs["--write-residuals"][0]]
    if as_json:
        args.append("--json")
    check("validate", args, cwd=cwd, outputs=outputs)


# ------------------------------------------------------------------------------- import-hf
def _hf_cases() -> dict[str, dict]:
    try:
        from test_hf_import import CASES  # the valid configs the import tests check
        return {name: cfg for name, (cfg, _) in CASES.items()}
    except ImportError:                       # run from elsewhere: one config is enough to mutate
        from test_examples import MIXTRAL_CONFIG
        return {"mixtral-8x7b": MIXTRAL_CONFIG}


HF_CONFIGS = _hf_cases()
RAW_JSON = [b"", b"{", b"[1, 2]", b"null", b"42", b"\"text\"", b"{\"model_type\": \"mixtral\",}", b"\xff\xfe\x00",
            b"{\"a\": NaN}", b"{\"model_type\": \"mixtral\", \"model_type\": \"bert\"}"]


@st.composite
def hf_specs(draw, valid: bool = False):
    name = draw(st.sampled_from(sorted(HF_CONFIGS)))
    if valid:
        return name, ("valid",)
    config = HF_CONFIGS[name]
    mut = draw(st.one_of(mutation(config, max_depth=2),
                         st.tuples(st.just("raw"), st.sampled_from(RAW_JSON))))
    return name, mut


@st.composite
def import_hf_inputs(draw):
    bad = draw(faults("config", "output", "id"))
    out = pick(draw, bad, "output", st.sampled_from(["fine", "fine-yml", "fine-existing"]),
               st.sampled_from(["fine"] * 7 + ["fine-yml", "fine-existing", "fine-existing"] + BAD_OUTPUT_KINDS))
    model_id = pick(draw, bad, "id", st.sampled_from([None, "my-moe"]),
                    st.sampled_from([None, "my-moe", "", "../escape", "a/b", "x" * 300, "ß", "-", "deepseek-v3"]))
    return pick(draw, bad, "config", hf_specs(valid=True), hf_specs()), out, model_id


@_settings(80)
@given(import_hf_inputs())
def test_import_hf(inp):
    (name, mut), out, model_id = inp
    cwd = workdir()
    config = write_doc(cwd / "config.json", apply_mutation(HF_CONFIGS[name], mut), fmt="json")
    path = str(cwd / "my-moe.yml") if out == "fine-yml" else output_path(out, cwd, ".yaml", "my-moe")
    args = ["import-hf", str(config), "-o", path] + (["--id", model_id] if model_id is not None else [])
    r = check("import-hf", args, cwd=cwd, outputs={"-o": (path, "fine" if out == "fine-yml" else out)})
    if r["exit_code"] == 0:                   # what import-hf wrote must load as a model
        loaded = run_cli(["memory", "--model", path, "--gpus", "64", "--json"], cwd=cwd, timeout=HANG_S["memory"])
        if loaded.get("exception") or loaded.get("traceback_printed") or "timeout" in loaded:
            report_violation("import-hf", "the written model crashes moesim memory",
                             f"$ moesim {shlex.join(args)}\n{loaded.get('traceback') or loaded.get('stderr') or loaded}")


# ---------------------------------------------------------------------------------- report
_REPORT_INPUTS: dict[str, Any] = {}

TINY_SPACE = {"name": "tiny", "models": ["mixtral-8x7b"], "systems": [{"name": "dgx-h100", "gpus": [8]}],
              "parallel": [{"tp": 1, "ep": "gpus"}], "batch": [16], "input_len": 512, "output_len": 128,
              "phase": "decode", "dtypes": {"weights": "bf16", "kv_cache": "bf16"}, "slo": {"tpot_ms_max": 100}}


def report_inputs() -> dict[str, Any]:
    """Valid inputs of `moesim report`, made once by the commands themselves (in this process)."""
    if not _REPORT_INPUTS:
        folder = FIXTURES / "report-inputs"
        folder.mkdir(exist_ok=True)
        small = ["--model", "mixtral-8x7b", "--gpus", "8", "--ep", "8"]
        made = {"simulate": _cli_json("simulate", *small, "--json"),
                "training": _cli_json("simulate", str(write_plain(folder / "t.yaml", SCENARIO_BASES["small-training"])),
                                      "--json")}
        decode = write_plain(folder / "d.yaml", SCENARIO_BASES["small-decode"])
        prefill = write_plain(folder / "p.yaml", SCENARIO_BASES["small-prefill"])
        made["disaggregated"] = _cli_json("simulate", str(decode), "--prefill", str(prefill), "--json")
        made["plan"] = _cli_json("plan", str(write_plain(folder / "space.yaml", TINY_SPACE)), "--json")
        cases = write_plain(folder / "cases.yaml", CASES_BASE)
        made["validation"] = _cli_json("validate", "--cases", str(cases), "--json")
        _REPORT_INPUTS.update(made)          # all or nothing: a failure above fails every call the same way
    return _REPORT_INPUTS


def write_plain(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


REPORT_KINDS = ["simulate", "training", "disaggregated", "plan", "validation"]


@st.composite
def report_input_specs(draw, valid: bool = False):
    """One input of `moesim report`: a valid output of simulate/plan/validate, or (valid=False) a
    missing file or one of those outputs broken: a field dropped or given a wrong type (a
    top-level field half the time: the report reads those), or replaced by malformed bytes."""
    if valid:
        return draw(st.sampled_from(REPORT_KINDS)), ("valid",)
    kind = draw(st.sampled_from(REPORT_KINDS + ["missing-file"]))
    if kind == "missing-file":
        return kind, None
    wrong = st.tuples(st.just("set"), st.integers(0, 10**6), st.sampled_from(WRONG_VALUES), st.sampled_from([1, 2]))
    how = draw(st.one_of(st.tuples(st.just("drop"), st.integers(0, 10**6)), wrong, wrong,
                         st.tuples(st.just("raw"), st.sampled_from(RAW_JSON))))
    return kind, how


def write_report_input(spec: tuple, cwd: Path, i: int) -> str:
    kind, how = spec
    path = cwd / f"input{i}.json"
    if kind == "missing-file":
        return str(path)
    doc = report_inputs()[kind]
    if how[0] == "raw":
        return str(write_doc(path, how[1]))
    if how[0] in ("drop", "set"):
        paths = key_paths(doc, depth=how[3] if how[0] == "set" else 2)   # the fields a report reads are near the top
        key = paths[how[1] % len(paths)]
        note(f"input{i}.json: {kind} result with {how[0]} at {'.'.join(map(str, key))}")
        mutated = apply_mutation(doc, (how[0], key) + tuple(how[2:3]))
        path.write_text(json.dumps(mutated, allow_nan=True, default=str))
        return str(path)
    path.write_text(json.dumps(doc, default=str))
    return str(path)


@st.composite
def report_cli_inputs(draw):
    bad = draw(st.sampled_from([(), ("inputs",), ("inputs",), ("output",), ("inputs", "output")]))
    specs = draw(st.lists(report_input_specs(valid=True), min_size=1, max_size=2))
    if "inputs" in bad:                     # one broken input, among valid ones
        specs.insert(draw(st.integers(0, len(specs))), draw(report_input_specs()))
    out = pick(draw, bad, "output", st.sampled_from(["fine"] * 4 + ["fine-pdf", "fine-existing"]),
               st.sampled_from(["fine", "fine-existing"] + BAD_OUTPUT_KINDS))
    return specs, out


@_settings(25)
@given(report_cli_inputs())
def test_report(inp):
    specs, out = inp
    report_inputs()     # made by the commands themselves (once; warm_parent usually made them already)
    cwd = workdir()
    inputs = [write_report_input(spec, cwd, i) for i, spec in enumerate(specs)]
    path = str(cwd / "report.pdf") if out == "fine-pdf" else output_path(out, cwd, ".html", "report")
    check("report", ["report", *inputs, "-o", path], cwd=cwd,
          outputs={"-o": (path, "fine" if out == "fine-pdf" else out)})


# ------------------------------------------------------------------------------------ plan
@st.composite
def plan_inputs(draw):
    bad = draw(faults("space", "workers", "sets", "cache", "outputs", "dask"))
    mut = pick(draw, bad, "space", st.just(("valid",)), mutation(TINY_SPACE, max_depth=3))
    workers = pick(draw, bad, "workers", st.sampled_from([None, None, 1, 2]), st.sampled_from([0, -1, 2, 10**12]))
    sets = pick(draw, bad, "sets", st.lists(st.sampled_from(VALID_SETS), max_size=2),
                st.lists(st.sampled_from(SETS), min_size=1, max_size=2))
    cache = pick(draw, bad, "cache", st.sampled_from([None, "fine"]),
                 st.sampled_from(["fine", "missing-parent", "is-file"]))
    dask = pick(draw, bad, "dask", st.none(), st.sampled_from(["not-an-address", "tcp://", "foo://x:1", ""]))
    output = pick(draw, bad, "outputs", VALID_OUTPUT, optional_output())
    report = pick(draw, bad, "outputs", st.sampled_from([None, None, "fine"]), optional_output())
    return mut, workers, sets, cache, output, report, dask, draw(st.booleans())


@_settings(30)
@given(plan_inputs())
def test_plan(inp):
    mut, workers, sets, cache, output, report, dask, as_json = inp
    cwd = workdir()
    args = ["plan", str(write_doc(cwd / "space.yaml", apply_mutation(TINY_SPACE, mut)))]
    if workers is not None:
        args += ["--workers", str(workers)]
    for s in sets:
        args += ["--set", s]
    outputs = {}
    if cache:
        cache_path = {"fine": cwd / "cache", "missing-parent": cwd / "no-such" / "cache",
                      "is-file": cwd / "a-file"}[cache]
        if cache == "is-file":
            cache_path.write_text("x\n")
        args += ["--cache", str(cache_path)]
    if output:
        outputs["-o"] = (output_path(output, cwd, ".json", "plan"), output)
        args += ["-o", outputs["-o"][0]]
    if report:
        outputs["--report"] = (output_path(report, cwd, ".html", "plan-report"), report)
        args += ["--report", outputs["--report"][0]]
    if dask:
        args += ["--dask", dask]
    if as_json:
        args.append("--json")
    check("plan", args, cwd=cwd, outputs=outputs)


# ------------------------------------------------------------------- click's own usage errors
# What click itself rejects before moesim sees it: a value that is not an integer, not one of a
# choice, a folder where a file is expected, an unknown option (a typo), a missing value or a
# missing required option. Click prints its own "Usage: ... Try ... Error: ..." block; the contract
# asks for one `error:` line here too. Kept apart from the per-command tests above so that this one
# failure does not stop hypothesis from exploring the rest of a command's inputs.
CLICK_LEVEL = [
    ["memory", "--gpus", "abc"], ["memory", "--gpus", "1e12"], ["memory", "--gpus", "16GPUs"],
    ["route", "--tokens", "64k"], ["route", "--capacity-factor", "x"], ["simulate", "--overlap", "three"],
    ["comm", "--op", "alltoall"], ["memory", "--gpu", "16"], ["simulate", "--batch"],
    ["memory", "<folder>"], ["validate"], ["import-hf", "config.json"], ["plan", "--workers", "two", "space.yaml"],
    ["report"], ["simulate", "--prefill", "<folder>"],
]


@pytest.mark.parametrize("args", CLICK_LEVEL, ids=[" ".join(a) for a in CLICK_LEVEL])
def test_click_level_errors(args):
    cwd = workdir()
    check(args[0] if args[0] in HANG_S else "memory", [str(cwd) if a == "<folder>" else a for a in args], cwd=cwd)


# ------------------------------------------------------------------------ failures found here
# Every failure this test has found, kept as a fixed input of the generated test it came from (run
# through the same body and checks), so it stays covered whatever hypothesis generates next; kept
# out of @example so that one of them failing does not stop hypothesis from exploring the rest.
FOUND = [
    ("memory", (None, {"--model": LONG_NAME, "--json": False}), "OSError: file name too long (core/loader.resolve)"),
    ("comm", (None, {"--system": LONG_NAME, "--gpus": 8, "--op": "all_gather", "--bytes": "1G", "--algo": None,
                     "--json": True}), "OSError: file name too long"),
    ("route", (None, {**MIXTRAL_EP8, "--redundant-experts": 10**12, "--json": False}), "hung in placement.replicate"),
    ("route", (None, {**MIXTRAL_EP8, "--placement": "eplb:1000000000000", "--json": False}), "hung"),
    ("comm", (None, {"--ep": True, "--gpus": 16, "--skew": "zipf:1.0", "--placement": "eplb:1000000000000",
                     "--tokens": None, "--system": None, "--json": False}), "hung"),
    ("route", (None, {**MIXTRAL_EP8, "--capacity-factor": "nan", "--json": False}), "ValueError in sample_routing"),
    ("route", (None, {**MIXTRAL_EP8, "--capacity-factor": "inf", "--json": False}), "OverflowError"),
    ("route", (None, {"--tokens": 10**8, "--json": False}), "MemoryError / 30 s under the 4 GiB guard"),
    ("comm", (None, {"--system": "dgx-h100", "--gpus": 10**12, "--op": "all_to_all", "--bytes": "1K", "--algo": "ring",
                     "--json": False}), "hung building the topology graph"),
    ("simulate", (None, {**MIXTRAL_EP8, "--json": False}, ("small-prefill", "valid"), "fine", None),
     "--prefill ignores --trace: exit 0, no trace file"),
    ("validate", (((0,), "measured-zero", ("valid",)), [], None, None, False), "ZeroDivisionError"),
    ("validate", (((COLLECTIVE_CASE,), None, ("drop", ("cases", 0, "params", "bytes"))), [], None, None, False),
     "KeyError in validation/comm.predict_collective (now validation/collective_model)"),
    ("import-hf", (("mixtral-8x7b", ("raw", b"\xff\xfe\x00")), "fine", None), "UnicodeDecodeError"),
    ("report", ([("simulate", ("raw", b"\xff\xfe\x00"))], "fine"), "UnicodeDecodeError in report.read_input"),
    ("report", ([("simulate", ("set", 11, "abc", 1))], "fine"), "a mistyped top-level field (11: breakdown)"),
    ("report", ([("simulate", ("set", 6, "abc", 1))], "fine"), "a mistyped top-level field (6: parallel)"),
]
TESTS = {"memory": "test_memory", "route": "test_route", "simulate": "test_simulate", "comm": "test_comm",
         "validate": "test_validate", "import-hf": "test_import_hf", "report": "test_report"}


@pytest.mark.parametrize("command, inp", [pytest.param(c, i, id=f"{c}: found {why}") for c, i, why in FOUND])
def test_found_failures(command, inp):
    globals()[TESTS[command]].hypothesis.inner_test(inp)


def test_harness_reports_a_hang_and_a_crash(monkeypatch):
    """The harness itself: a hang is cut off by the timeout, an exception becomes a crash."""
    def boom(*a, **k):
        raise ZeroDivisionError("planted")

    cwd = workdir()
    r = run_cli(["models"], cwd=cwd, timeout=60)
    assert r["exit_code"] == 0 and "deepseek-v3" in r["stdout"]
    from moesim.specs import catalog
    monkeypatch.setattr(catalog, "model_rows", boom)
    r = run_cli(["models"], cwd=cwd, timeout=60)
    assert r["exception_type"] == "ZeroDivisionError" and r["frame"], r
    monkeypatch.setattr(catalog, "model_rows", lambda: bytearray(2 * MEMORY_HEADROOM))
    r = run_cli(["models"], cwd=cwd, timeout=60)
    assert r["exception_type"] == "MemoryError", r        # the address-space limit holds
    monkeypatch.setattr(catalog, "model_rows", lambda: time.sleep(30))
    r = run_cli(["models"], cwd=cwd, timeout=1)
    assert r == {"timeout": 1}


def teardown_module(module):
    import shutil
    shutil.rmtree(FIXTURES, ignore_errors=True)
