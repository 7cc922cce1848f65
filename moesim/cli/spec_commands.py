"""`moesim memory`, `models`, `systems`, `import-hf`: what the specs say (VRAM ledger, catalogues, HF import)."""
from __future__ import annotations

from typing import Any, Optional

import click

from moesim.cli.app import (SCENARIO_ARG, YAML_SUFFIXES, OutputFile, echo_json, main, override_options,
                            scenario_overrides)


@main.command()
@SCENARIO_ARG
@override_options
@click.option("--json", "as_json", is_flag=True, help="Print the ledger as JSON.")
def memory(scenario: Optional[str], as_json: bool, **flags: Any) -> None:
    """Per-GPU VRAM: weights, KV cache, activations, buffers, reserve, training states; fits?

    SCENARIO is a scenario YAML; without it the built-in default is used. Flags override its
    fields; giving --gpus or any parallel size rebuilds the split from the flags alone.

    \b
    Examples:
      moesim memory
      moesim memory --model deepseek-v3 --system gb200-nvl72 --gpus 72 --ep 72 --redundant-experts 32
      moesim memory --model mixtral-8x7b --gpus 2 --tp 2 --weights-dtype bf16 --json
    """
    from moesim.cluster.scenario import load_scenario
    from moesim.costs.memory import memory_ledger
    from moesim.present.tables import memory_table

    sc = load_scenario(scenario, scenario_overrides(flags))
    ledger = memory_ledger(sc).to_json()
    if as_json:
        echo_json(ledger)
        return
    p = sc.plan
    line = (f"{sc.input.name}: {sc.model.name} on {sc.system.fleet_label(sc.gpus)}, {sc.system.gpu.name} "
            f"({sc.system.id}); "
            f"tp={p.tp} pp={p.pp} dp={p.dp} ep={p.ep} etp={p.etp}; weights {sc.input.dtypes.weights}, "
            f"KV {sc.input.dtypes.kv_cache}")
    click.echo(memory_table(ledger, line))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def models(as_json: bool) -> None:
    """Built-in models with parameter counts and KV bytes per token (BF16)."""
    from moesim.present.tables import table
    from moesim.specs.catalog import model_rows

    rows = model_rows()
    if as_json:
        echo_json(rows)
        return
    click.echo(table(["id", "total B", "active B", "experts", "top-k", "shared", "MoE layers", "KV B/token"],
                     [[r["id"], f"{r['total_params'] / 1e9:.2f}", f"{r['active_params'] / 1e9:.2f}",
                       r["experts"], r["top_k"], r["shared_experts"], r["moe_layers"],
                       f"{r['kv_bytes_per_token']:,}"] for r in rows]))
    click.echo("\nactive = LM head included, input embedding excluded (see docs/models.md)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def systems(as_json: bool) -> None:
    """Built-in systems: GPU, NVLink domain, scale-out per GPU."""
    from moesim.present.tables import table
    from moesim.specs.catalog import system_rows

    rows = system_rows()
    if as_json:
        echo_json(rows)
        return
    click.echo(table(["id", "gpu", "node", "NVLink domain", "NVLink GB/s/dir", "NIC Gb/s/GPU", "HBM GiB"],
                     [[r["id"], r["gpu"], r["node"], f"{r['nvlink_domain_gpus']} GPUs ({r['nvlink_domain']})",
                       f"{r['nvlink_GBps_per_direction']:g}", f"{r['scale_out_Gbps_per_gpu']:g}",
                       f"{r['hbm_capacity_bytes'] / 2**30:.2f}"] for r in rows]))


@main.command(name="import-hf")
@click.argument("config_json", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=OutputFile(*YAML_SUFFIXES),
              help="Model YAML to write (written only if the import succeeds).")
@click.option("--id", "model_id", help="Model id (default: the output file name).")
def import_hf(config_json: str, output: str, model_id: Optional[str]) -> None:
    """Convert a Hugging Face config.json into a moesim model YAML.

    \b
    Example:
      moesim import-hf path/to/config.json -o workloads/models/my-moe.yaml
    """
    import json
    from pathlib import Path

    from moesim.core.errors import MoesimError
    from moesim.core.output import write_atomic
    from moesim.specs.hf_import import convert, to_yaml

    try:
        config = json.loads(Path(config_json).read_text())
    except OSError as exc:
        raise MoesimError(f"cannot read file ({exc.strerror})", file=config_json, fix="check the path") from None
    except json.JSONDecodeError as exc:
        raise MoesimError(f"malformed JSON: {exc.msg} at line {exc.lineno}", file=config_json,
                          fix="give the model's config.json as downloaded") from None
    except UnicodeDecodeError as exc:
        raise MoesimError(f"not a UTF-8 text file (byte {exc.start} cannot be decoded)", file=config_json,
                          fix="give the model's config.json as downloaded") from None
    spec = convert(config, model_id=model_id or Path(output).stem, source=config_json)
    write_atomic(output, to_yaml(spec))
    click.echo(f"wrote {output}")
