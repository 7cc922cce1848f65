"""Number formats: bytes per element (with block-scale overhead) and tensor-core family.

Read from `workloads/dtypes.yaml` so a new format (say MXFP6) is a data change, not a code change.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

from moesim.core.errors import MoesimError
from moesim.core.loader import Record, data_root, load_record


class DType(Record):
    bits: int
    family: Optional[str]
    scale_bytes: int = 0
    block_elements: int = 1
    source: str

    @property
    def bytes_per_element(self) -> float:
        return self.bits / 8 + (self.scale_bytes / self.block_elements if self.scale_bytes else 0.0)


class DTypeTable(Record):
    dtypes: dict[str, DType]
    aliases: dict[str, str] = {}


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
