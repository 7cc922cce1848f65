"""Number formats: bytes per element (with block-scale overhead) and tensor-core family.

Read from `workloads/dtypes.yaml` so a new format (say MXFP6) is a data change, not a code change.
A weight-only format (`int4_wo`) names the format of the GEMM's other operand in `activations`:
its weights are stored in the format, its activations (and the tensor-core family) are not.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

from pydantic import model_validator

from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, load_record


class DType(Record):
    bits: int
    family: Optional[str]
    scale_bytes: int = 0
    block_elements: int = 1
    activations: Optional[str] = None  # weight-only formats: the format of the activation operand
    source: str
    note: Optional[str] = None

    @property
    def bytes_per_element(self) -> float:
        return self.bits / 8 + (self.scale_bytes / self.block_elements if self.scale_bytes else 0.0)

    @property
    def weight_only(self) -> bool:
        return self.activations is not None


class DTypeTable(Record):
    dtypes: dict[str, DType]
    aliases: dict[str, str] = {}

    @model_validator(mode="after")
    def _names_resolve(self) -> "DTypeTable":
        for alias, target in self.aliases.items():
            if target not in self.dtypes:
                raise ValueError(f"alias {alias!r} names unknown dtype {target!r}")
        for name, dt in self.dtypes.items():
            act = self.dtypes.get(dt.activations) if dt.activations else None
            if dt.activations and (act is None or act.weight_only):
                raise ValueError(f"{name}.activations must name a dtype that is not weight-only, got {dt.activations!r}")
            if act is not None and act.family != dt.family:
                raise ValueError(f"{name}: family {dt.family!r} must be its activations' family {act.family!r}")
        return self


@lru_cache(maxsize=1)
def table() -> DTypeTable:
    return load_record(DTypeTable, data_root() / "workloads" / "dtypes.yaml")


def names() -> list[str]:
    t = table()
    return sorted(set(t.dtypes) | set(t.aliases))


def canonical(name: str, *, field: str = "dtype") -> str:
    t = table()
    key = t.aliases.get(name, name)
    if key not in t.dtypes:
        raise MoesimError(f"unknown dtype {name!r}", field=field, fix=f"use one of: {', '.join(names())}")
    return key


def get(name: str, *, field: str = "dtype") -> DType:
    return table().dtypes[canonical(name, field=field)]


def bytes_per_element(name: str, *, field: str = "dtype") -> float:
    return get(name, field=field).bytes_per_element


def activation_bytes_per_element(name: str, *, field: str = "dtype") -> float:
    """Bytes per element of a GEMM's activation operand in format `name`: the format itself, or
    for a weight-only format (`int4_wo`) the format its activations stay in (BF16)."""
    dt = get(name, field=field)
    return get(dt.activations).bytes_per_element if dt.activations else dt.bytes_per_element
