"""Every `moesim ...` example a user is shown must run: the ```bash blocks of README.md and the
"Example(s):" sections of every command's `--help` (the click group and its subgroups, walked at
test time, so a new example is tested without touching this file).

How an example runs:
- One test case per distinct command line (an example that appears in several places runs once;
  its id names every place). A line is split at `&&` / `;` like a shell would; steps that are not
  `moesim` (venv, pip, lint-imports, pytest, make, a CUDA binary, a screenshot script) are setup or
  other tools and are left out; `mkdir -p` runs. `> FILE` writes the step's stdout to FILE; globs
  expand in the working folder. A pipe into another program is not supported (the test says so).
- Each case runs in its own temporary folder holding a "shadow" of the repository's data folders
  (real folders, one symlink per file), so repository-relative inputs (`validation/cases.yaml`)
  resolve and every file an example writes (`-o workloads/models/my-moe.yaml`, `--trace step.json`,
  `> sim.json`) lands in the temporary folder, never in the repository.
- An input another example makes (`moesim report sim.json plan.json validation.json ...`) is made by
  running that example first in the same folder (its outputs are cached between cases).
- A file an example invents for the user to replace (`my-scenario.yaml`, `SPACE.yaml`,
  `path/to/config.json`, `results/*.json`) gets the stand-in listed in STAND_INS.
- Examples that cannot run here are listed in NOT_RUN with the reason; everything else runs.

Each step must exit 0 without a traceback, and every output file the example names must exist.
"""
from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import click
import pytest
import yaml
from click.testing import CliRunner

from moesim.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Data folders an example may read by a repository-relative path (mirrored into each case's folder).
SHADOW_DIRS = ("workloads", "validation", "topologies", "reports")
# Options whose value is a file (or folder) the command writes.
OUTPUT_OPTIONS = {"-o", "--output", "--trace", "--report", "--cache", "--write-residuals"}
OPERATORS = {"&&", ";", "|", "||", ">", ">>", "<", "&"}
INPUT_SUFFIX = re.compile(r"\.(ya?ml|json|csv|npy|html|pdf|png|svg)$")

FIXED_POINT_FIT = ("a fit iterated to a fixed point over 1,823 served benchmarks (up to 8 passes, 31 minutes on 2 "
                   "cores); the fit of serving parameters is tested on small case files in "
                   "tests/test_validation_serving_load.py, the iteration in tests/test_kernel_fit.py")
# Examples that cannot run on this machine or in CI, with the reason (key: the command as extracted).
NOT_RUN = {
    "mkdir -p results && moesim bench micro gemm -o results/gemm.json":
        "needs a CUDA GPU (--backend cuda is the default); the CPU path of the same harness runs in "
        "`moesim bench micro collective --backend cpu --quick`",
    "moesim validate --cases validation/serving_load.yaml --workers 2 --cv config":
        "serves 1,823 measured benchmarks and refits once per deployment left out (minutes on 2 cores); the "
        "serving_load kind, its workers and --cv config are tested on small case files in "
        "tests/test_validation_serving_load.py",
    "moesim validate --cases validation/serving_load.yaml --workers 2 --cv model":
        "serves 1,823 measured benchmarks (minutes on 2 cores); --cv model and --cv system are tested on small "
        "case files in tests/test_validation_serving_load.py",
    "moesim calibrate --cases validation/cases.yaml --cases validation/serving_load.yaml --workers 2 -o kernels.yaml":
        FIXED_POINT_FIT,
    "moesim calibrate --cases validation/cases.yaml --cases validation/serving_load.yaml --workers 2 "
    "-o topologies/calibration/kernels.yaml": FIXED_POINT_FIT,
    "moesim plan SPACE.yaml --dask tcp://127.0.0.1:8786 --cache .moesim-cache -o plan.json":
        "needs a Dask scheduler listening at that address (the planner's Dask path is tested against a "
        "LocalCluster in tests/test_planner.py)",
}

# Files an example invents for the user to replace, and what stands in for them here.
STAND_INS = {
    "my-scenario.yaml": ("copy", "workloads/scenarios/default.yaml"),
    "my.yaml": ("copy", "workloads/scenarios/default.yaml"),
    "SPACE.yaml": ("copy", "workloads/spaces/example-dsv3-decode.yaml"),
    "path/to/config.json": ("hf-config", "mixtral"),
    # microbenchmark results (made on a GPU machine): the synthetic results the calibration tests use
    "results": ("copy-dir", "topologies/calibration/synthetic-results"),
}

# The Hugging Face config.json of Mixtral-8x7B (mistralai/Mixtral-8x7B-v0.1), the stand-in for
# `path/to/config.json`; tests/test_hf_import.py checks the same values against the built-in model.
MIXTRAL_CONFIG = {
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 32000,
}


# ------------------------------------------------------------------------------------ extraction
@dataclass
class Step:
    argv: list[str]                  # without the leading "moesim" (or the full mkdir argv)
    stdout_to: str | None = None     # `> FILE`
    kind: str = "moesim"             # "moesim" | "mkdir"


@dataclass
class Example:
    command: str                     # comment-stripped, normalised text (the key of NOT_RUN)
    steps: list[Step]
    origins: list[str] = field(default_factory=list)
    problem: str | None = None       # why the line cannot be turned into steps

    @property
    def outputs(self) -> list[str]:
        out = []
        for step in self.steps:
            if step.stdout_to:
                out.append(step.stdout_to)
            if step.kind != "moesim":
                continue
            for i, tok in enumerate(step.argv):
                if tok in OUTPUT_OPTIONS and i + 1 < len(step.argv):
                    out.append(step.argv[i + 1])
                elif "=" in tok and tok.split("=", 1)[0] in OUTPUT_OPTIONS:
                    out.append(tok.split("=", 1)[1])
        return out

    @property
    def id(self) -> str:
        return f"{'+'.join(self.origins)}: {self.command}"


def _tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _quote(tok: str) -> str:
    """Shell quoting only where a shell needs it (globs stay as written)."""
    return tok if re.fullmatch(r"[\w@%+=:,./*?\[\]~-]+", tok) else shlex.quote(tok)


def _is_operator(tok: str) -> bool:
    return tok in OPERATORS


def parse_line(line: str) -> Example | None:
    """The moesim steps of one shell line, or None if it has none."""
    try:
        toks = _tokens(line)
    except ValueError as exc:           # unbalanced quotes
        return Example(command=line.strip(), steps=[], problem=f"cannot split the line: {exc}")
    if "moesim" not in toks:
        return None
    # split into simple commands at && ; ||
    commands: list[list[str]] = [[]]
    for tok in toks:
        if tok in ("&&", ";", "||"):
            commands.append([])
        else:
            commands[-1].append(tok)
    steps: list[Step] = []
    kept: list[list[str]] = []
    problem = None
    for cmd in commands:
        if not cmd:
            continue
        if cmd[0] == "mkdir":
            steps.append(Step(argv=cmd, kind="mkdir"))
            kept.append(cmd)
            continue
        if cmd[0] != "moesim":
            continue                    # setup or another tool: not a moesim example
        argv, stdout_to = [], None
        i = 1
        while i < len(cmd):
            tok = cmd[i]
            if tok == ">" and i + 1 < len(cmd):
                stdout_to = cmd[i + 1]
                i += 2
                continue
            if _is_operator(tok):
                problem = f"shell operator {tok!r} is not supported by this test; rewrite the example or extend the test"
            argv.append(tok)
            i += 1
        steps.append(Step(argv=argv, stdout_to=stdout_to))
        kept.append(cmd)
    if not any(s.kind == "moesim" for s in steps):
        return None
    text = " && ".join(" ".join(t if _is_operator(t) else _quote(t) for t in cmd) for cmd in kept)
    return Example(command=text, steps=steps, problem=problem)


def readme_lines() -> list[tuple[str, str]]:
    """(origin, line) for every line of every ```bash block of README.md."""
    out, in_bash = [], False
    for n, line in enumerate(README.read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_bash = (not in_bash) and stripped[3:].strip() in ("bash", "sh", "shell", "console")
            continue
        if in_bash and stripped:
            out.append((f"README.md:{n}", stripped))
    return out


def _walk(cmd: click.Command, path: list[str], parent: Optional[click.Context] = None):
    # contexts chained as `moesim` builds them: click caches each command's help option on first
    # use, so a parentless context would leave subcommands without the group's `-h`
    ctx = click.Context(cmd, info_name=path[-1], parent=parent, **(cmd.context_settings if parent is None else {}))
    yield path, cmd.get_help(ctx)
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            yield from _walk(cmd.get_command(ctx, name), path + [name], ctx)


def help_lines() -> list[tuple[str, str]]:
    """(origin, line) for every line of the Example(s): sections of every command's --help."""
    out = []
    for path, text in _walk(main, ["moesim"]):
        origin = f"help({' '.join(path[1:]) or 'moesim'})"
        in_examples = False
        for line in text.splitlines():
            stripped = line.strip()
            if re.fullmatch(r"Examples?:", stripped):
                in_examples = True
                continue
            if in_examples and (not stripped or re.fullmatch(r"[A-Z][A-Za-z ]*:", stripped)):
                in_examples = False     # a blank line or the next section ("Options:") ends it
                continue
            if in_examples:
                out.append((origin, stripped))
    return out


def all_examples() -> list[Example]:
    seen: dict[str, Example] = {}
    for origin, line in readme_lines() + help_lines():
        ex = parse_line(line)
        if ex is None:
            continue
        if ex.command in seen:
            seen[ex.command].origins.append(origin)
        else:
            ex.origins.append(origin)
            seen[ex.command] = ex
    return list(seen.values())


EXAMPLES = all_examples()


# ------------------------------------------------------------------------------------- running
_PRODUCED: dict[str, dict[str, bytes]] = {}   # example command -> {output path: bytes}, from runs that passed


def make_shadow(root: Path) -> None:
    """Real folders mirroring the repository's data folders, one symlink per file."""
    for top in SHADOW_DIRS:
        for src in (REPO / top).rglob("*"):
            if src.is_file():
                dst = root / src.relative_to(REPO)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src)


def _looks_like_input(tok: str) -> bool:
    return not tok.startswith("-") and ("/" in tok or bool(INPUT_SUFFIX.search(tok))) and ":" not in tok


def inputs_of(ex: Example) -> list[str]:
    """Path-like arguments of the example that it does not write itself."""
    outputs, out = set(ex.outputs), []
    for step in ex.steps:
        if step.kind != "moesim":
            continue
        for i, tok in enumerate(step.argv):
            if tok in outputs and i > 0 and step.argv[i - 1] in OUTPUT_OPTIONS:
                continue
            value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
            if _looks_like_input(value):
                out.append(value)
    return out


def producer_of(path: str, exclude: Example) -> Example | None:
    for ex in EXAMPLES:
        if ex is not exclude and ex.command not in NOT_RUN and path in ex.outputs and not ex.problem:
            return ex
    return None


def stand_in(path: str, cwd: Path) -> bool:
    for key, (how, source) in STAND_INS.items():
        if path != key and not path.startswith(key + "/"):
            continue
        target = cwd / key
        if target.exists():
            return True
        target.parent.mkdir(parents=True, exist_ok=True)
        if how == "copy":
            shutil.copyfile(REPO / source, target)
        elif how == "copy-dir":
            shutil.copytree(REPO / source, target)
        elif how == "hf-config":
            target.write_text(json.dumps(MIXTRAL_CONFIG, indent=2))
        return True
    return False


def _exists(cwd: Path, path: str) -> bool:
    return bool(glob.glob(str(cwd / path))) if any(c in path for c in "*?[") else (cwd / path).exists()


def provide_inputs(ex: Example, cwd: Path, monkeypatch, depth: int = 0) -> None:
    for path in inputs_of(ex):
        if _exists(cwd, path):
            continue
        producer = producer_of(path, ex)
        if producer is not None and depth < 4:
            if producer.command in _PRODUCED:
                for rel, data in _PRODUCED[producer.command].items():
                    if not (cwd / rel).exists():
                        (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
                        (cwd / rel).write_bytes(data)
            else:
                provide_inputs(producer, cwd, monkeypatch, depth + 1)
                run_example(producer, cwd, monkeypatch, what=f"input {path} for {ex.command!r}")
            if _exists(cwd, path):
                continue
        stand_in(path, cwd)
        # else: nothing makes it; the example runs and its own error says so


def _expand(argv: list[str], cwd: Path) -> list[str]:
    out = []
    for tok in argv:
        if any(c in tok for c in "*?[") and not tok.startswith("-"):
            matches = sorted(glob.glob(tok, root_dir=cwd))
            out.extend(matches or [tok])
        else:
            out.append(tok)
    return out


def _describe(argv: list[str], result) -> str:
    lines = [f"$ moesim {shlex.join(argv)}", f"exit code {result.exit_code}"]
    if result.stderr.strip():
        lines.append("stderr (last 2000 chars):\n" + result.stderr[-2000:])
    if result.stdout.strip():
        lines.append("stdout (last 1000 chars):\n" + result.stdout[-1000:])
    if result.exc_info and not isinstance(result.exception, SystemExit):
        lines.append("exception:\n" + "".join(traceback.format_exception(*result.exc_info))[-3000:])
    return "\n".join(lines)


def run_example(ex: Example, cwd: Path, monkeypatch, what: str = "example") -> None:
    monkeypatch.chdir(cwd)
    for out in ex.outputs:            # never write through a shadow symlink into the repository
        if (cwd / out).is_symlink():
            (cwd / out).unlink()
    for step in ex.steps:
        if step.kind == "mkdir":
            for p in step.argv[1:]:
                if not p.startswith("-"):
                    (cwd / p).mkdir(parents=True, exist_ok=True)
            continue
        argv = _expand(step.argv, cwd)
        monkeypatch.setattr(sys, "argv", ["moesim", *argv])
        result = CliRunner().invoke(main, argv, catch_exceptions=True)
        failed = (result.exit_code != 0
                  or (result.exception is not None and not isinstance(result.exception, SystemExit))
                  or "Traceback" in result.output or "Traceback" in result.stderr)
        assert not failed, f"{what} failed: {ex.command}\n{_describe(argv, result)}"
        if step.stdout_to:
            (cwd / step.stdout_to).write_text(result.stdout)
    missing = [out for out in ex.outputs if not (cwd / out).exists()]
    assert not missing, f"{what} {ex.command!r} exited 0 but did not write {missing}"
    _PRODUCED[ex.command] = {out: (cwd / out).read_bytes() for out in ex.outputs if (cwd / out).is_file()}


# --------------------------------------------------------------------------------------- tests
def test_examples_were_found():
    """The extraction itself works: README and --help both contribute, and every command of the
    CLI that has an Example(s) section contributed at least one line."""
    origins = {o.split(":")[0].split("(")[0] for ex in EXAMPLES for o in ex.origins}
    assert {"README.md", "help"} <= origins, origins
    assert len(EXAMPLES) >= 20, [ex.command for ex in EXAMPLES]


def test_not_run_list_is_current():
    """Every entry of NOT_RUN names an example that still exists (a stale entry hides nothing)."""
    commands = {ex.command for ex in EXAMPLES}
    stale = [c for c in NOT_RUN if c not in commands]
    assert not stale, f"NOT_RUN names examples that no longer exist: {stale}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[ex.id for ex in EXAMPLES])
def test_example_runs(example: Example, tmp_path, monkeypatch):
    if example.command in NOT_RUN:
        pytest.skip(f"not run: {NOT_RUN[example.command]}")
    assert example.problem is None, f"{example.command}: {example.problem}"
    make_shadow(tmp_path)
    provide_inputs(example, tmp_path, monkeypatch)
    run_example(example, tmp_path, monkeypatch)


def test_readme_scenario_format_block_is_a_valid_scenario(tmp_path):
    """The ```yaml block under "Scenario format" is a scenario a user may copy: it must load."""
    text = README.read_text()
    match = re.search(r"## Scenario format\s+```yaml\n(.*?)```", text, re.DOTALL)
    assert match, "README.md has no ```yaml block under '## Scenario format'"
    path = tmp_path / "scenario.yaml"
    path.write_text(match.group(1))
    assert isinstance(yaml.safe_load(match.group(1)), dict)
    result = CliRunner().invoke(main, ["memory", str(path), "--json"])
    assert result.exit_code == 0, _describe(["memory", str(path), "--json"], result)


@pytest.mark.parametrize("name", ["decode", "prefill", "training"])
def test_shipped_example_scenarios_load(name):
    """The scenarios the README names are shipped and fit in memory (`moesim memory`)."""
    path = REPO / "workloads" / "scenarios" / f"{name}.yaml"
    result = CliRunner().invoke(main, ["memory", str(path), "--json"])
    assert result.exit_code == 0, _describe(["memory", str(path), "--json"], result)
    ledger = json.loads(result.stdout)
    assert ledger.get("fits", True) is True, ledger
