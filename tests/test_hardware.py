"""Hardware data files: every built-in GPU and system loads, every number has a source,
user-written systems load from any path, and bad input fails with a located MoesimError."""
from __future__ import annotations

import re
import shutil

import pytest
import yaml
from pydantic import BaseModel

from moesim.core import units
from moesim.core.errors import MoesimError
from moesim.specs.hardware import Sourced, gpu_names, gpus_dir, load_gpu, load_system, system_names, systems_dir

GPU_FILES = sorted(gpus_dir().glob("*.yaml"))
SYSTEM_FILES = sorted(systems_dir().glob("*.yaml"))

# Source abbreviations used in the data files; each file that uses one must expand it in its header.
ABBREVIATIONS = ["AIC", "MLENG", "SBOOK", "DS-ISCA", "DS-V3", "SIMAI", "MLPERF-H200", "MLPERF-B200",
                 "MLPERF-GB200", "DEEPEP", "BW-DS"]


def sourced_fields(model: BaseModel, prefix: str = ""):
    """Yield (dotted field name, Sourced) for every Sourced value anywhere inside `model`."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, Sourced):
            yield path, value
        elif isinstance(value, BaseModel):
            yield from sourced_fields(value, f"{path}.")


def test_builtin_files_exist():
    assert {"h100-sxm", "h800-sxm", "h200-sxm", "b200-sxm", "gb200"} <= set(gpu_names())
    assert {"dgx-h100", "dgx-h800", "hgx-h200", "hgx-b200", "gb200-nvl72"} <= set(system_names())


@pytest.mark.parametrize("path", GPU_FILES, ids=lambda p: p.stem)
def test_gpu_loads_with_sources(path):
    gpu = load_gpu(path.stem)
    assert gpu.id == path.stem
    assert load_gpu(str(path)) == gpu
    fields = list(sourced_fields(gpu))
    assert len(fields) > 15
    for name, item in fields:
        assert item.source.strip(), f"{path.name}: {name} has an empty source"
    assert gpu.capacity_bytes > 0 and gpu.hbm_Bps > 0
    assert gpu.peak_flops("bf16") > 0 and gpu.peak_flops("fp8") > gpu.peak_flops("bf16")


@pytest.mark.parametrize("path", SYSTEM_FILES, ids=lambda p: p.stem)
def test_system_loads_with_sources_and_gpu(path):
    system = load_system(path.stem)
    assert system.id == path.stem
    assert system.spec.gpu in gpu_names()
    assert system.gpu == load_gpu(system.spec.gpu)
    for name, item in sourced_fields(system.spec):
        assert item.source.strip(), f"{path.name}: {name} has an empty source"
    assert system.domain_gpus % system.gpus_per_node == 0
    assert system.spec.scale_up.per_gpu_GBps_per_direction.value > 0
    assert system.spec.scale_out.per_gpu_Bps > 0


@pytest.mark.parametrize("path", GPU_FILES + SYSTEM_FILES, ids=lambda p: p.stem)
def test_abbreviations_expanded_in_header(path):
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for abbr in ABBREVIATIONS:
        if re.search(rf"(?<![\w-]){re.escape(abbr)}(?![\w-])", body):
            assert re.search(rf"#\s+{re.escape(abbr)}\s+=", header), \
                f"{path.name} uses {abbr} but its header does not expand it"


def test_known_values():
    h100 = load_gpu("h100-sxm")
    assert 79 * units.GiB <= h100.capacity_bytes <= 81 * units.GiB
    assert h100.dense_TFLOPs.fp4.value is None and h100.peak_flops("fp4") is None
    assert load_gpu("h800-sxm").nvlink.per_direction_GBps.value == 200
    assert load_system("gb200-nvl72").domain_gpus == 72
    assert load_system("gb200-nvl72").gpus_per_node == 4
    assert load_system("dgx-h100").spec.scale_out.per_gpu_Bps == 50 * units.GB


def test_user_system_file_loads_by_path(tmp_path):
    folder = tmp_path / "anywhere" / "else"
    folder.mkdir(parents=True)
    copy = folder / "my-cluster.yaml"
    shutil.copy(systems_dir() / "dgx-h100.yaml", copy)
    system = load_system(str(copy))
    assert system.gpu.id == "h100-sxm"
    assert system.spec == load_system("dgx-h100").spec


def test_value_without_source_is_rejected(tmp_path):
    data = yaml.safe_load((systems_dir() / "dgx-h100.yaml").read_text())
    del data["scale_up"]["per_gpu_GBps_per_direction"]["source"]
    bad = tmp_path / "no-source.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(MoesimError) as info:
        load_system(str(bad))
    message = str(info.value)
    assert "scale_up.per_gpu_GBps_per_direction.source" in message
    assert str(bad) in message


def test_empty_source_is_rejected(tmp_path):
    data = yaml.safe_load((systems_dir() / "dgx-h100.yaml").read_text())
    data["gpus_per_node"]["source"] = "  "
    bad = tmp_path / "empty-source.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(MoesimError, match="gpus_per_node.source"):
        load_system(str(bad))


def test_unknown_gpu_in_user_system_is_located(tmp_path):
    data = yaml.safe_load((systems_dir() / "dgx-h100.yaml").read_text())
    data["gpu"] = "h100-sx"
    bad = tmp_path / "typo-gpu.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(MoesimError) as info:
        load_system(str(bad))
    assert "did you mean 'h100-sxm'" in str(info.value)


def test_unknown_system_suggests_closest():
    with pytest.raises(MoesimError) as info:
        load_system("dgx-h10")
    assert "did you mean 'dgx-h100'" in str(info.value)
