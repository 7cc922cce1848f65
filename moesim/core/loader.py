"""Read YAML data files into validated records, with file, field and line in every error.

Also finds the data roots (`topologies/`, `workloads/`) and resolves a name such as
`dgx-h100` or a path such as `./my-system.yaml` to one file, suggesting the closest name when
the user mistypes one.
"""
from __future__ import annotations

import copy
import difflib
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from moesim.core.errors import MoesimError

T = TypeVar("T", bound=BaseModel)


class Record(BaseModel):
    """Base of every data record: immutable, and unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def data_root() -> Path:
    """The folder that holds `topologies/` and `workloads/`.

    Order: $MOESIM_DATA; the source checkout (editable install); `<prefix>/share/moesim`
    (wheel install, see pyproject data-files). Found once per value of $MOESIM_DATA: a step
    simulation asks for it hundreds of times, and each search stats the file system.
    """
    return _data_root(os.environ.get("MOESIM_DATA"))


@lru_cache(maxsize=8)
def _data_root(env: Optional[str]) -> Path:
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "moesim"]
    for root in candidates:
        if (root / "topologies").is_dir() and (root / "workloads").is_dir():
            return root
    raise MoesimError("cannot find the data folders topologies/ and workloads/",
                      field="MOESIM_DATA", fix="set MOESIM_DATA to the moesim checkout")


_PARSED: dict = {}


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; return the plain data and the node tree (for line numbers).

    Parses are kept per (path, size, mtime), so a sweep that resolves thousands of scenarios from
    one file parses it once; callers get their own copy of the data."""
    try:
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _PARSED:
        data, node = _PARSED[key]
        return copy.deepcopy(data), node
    data, node = _parse_yaml(path)
    if key is not None:
        if len(_PARSED) > 256:
            _PARSED.clear()
        _PARSED[key] = (data, node)
    return copy.deepcopy(data), node


def _parse_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MoesimError(f"cannot read file ({exc.strerror})", file=str(path),
                          fix="check the path") from None
    except UnicodeDecodeError as exc:
        raise MoesimError(f"not a UTF-8 text file (byte {exc.start} cannot be decoded)", file=str(path),
                          fix="give a YAML file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MoesimError(f"malformed YAML: {problem}", file=str(path), field=where,
                          fix="fix the YAML syntax (indentation, colons, quotes)") from None
    return data, node


def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the value at `loc` (a pydantic error location) in a composed YAML tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
            if match is None:
                match = next((k for k, _ in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            match = node.value[key]
        else:
            match = None
        if match is None:
            break
        node = match
        line = node.start_mark.line + 1
    return line


def inner_model(annotation: Any) -> Any:
    """The first pydantic model class inside an annotation (Optional[X], list[X], Union...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = inner_model(arg)
        if found is not None:
            return found
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _walk(model: type[BaseModel], loc: tuple) -> tuple[tuple, list[str]]:
    """Follow a pydantic error location through the record types.

    Returns the location as the user wrote it (discriminated-union tags such as `serving`
    removed) and the valid field names of the record that holds the last key.
    """
    clean: list = []
    candidates: list[type[BaseModel]] = [model]
    parent_fields: list[str] = sorted(model.model_fields)
    for key in loc:
        if isinstance(key, int):
            clean.append(key)
            continue
        owner = next((m for m in candidates if key in m.model_fields), None)
        if owner is None:
            tagged = [m for m in candidates if any(
                key in getattr(f.annotation, "__args__", ()) for n, f in m.model_fields.items() if n == "kind")]
            if tagged:  # a union tag: not something the user wrote
                candidates = tagged
                parent_fields = sorted(tagged[0].model_fields)
                continue
            clean.append(key)
            parent_fields = sorted({n for m in candidates for n in m.model_fields})
            candidates = []
            continue
        clean.append(key)
        parent_fields = sorted(owner.model_fields)
        candidates = _models_in(owner.model_fields[key].annotation)
    return tuple(clean), parent_fields


_BOUNDS = {"greater_than": "a value > {gt}", "greater_than_equal": "a value >= {ge}",
           "less_than": "a value < {lt}", "less_than_equal": "a value <= {le}"}


def validation_error(exc: ValidationError, model: type[BaseModel], *, file: str | None,
                     node: yaml.Node | None = None, prefix: str | None = None) -> MoesimError:
    """Turn pydantic's most useful error into one MoesimError naming field, line and fix.

    An unknown field is reported before anything else: a misspelt name also makes the real
    field look missing, and the misspelling is what the user must fix.
    """
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    raw_loc = tuple(k for k in err["loc"] if not (isinstance(k, str) and k.startswith("function-")))
    loc, allowed = _walk(model, raw_loc)
    field = ".".join(str(k) for k in loc)
    field = ".".join(p for p in (prefix, field) if p) or "(top level)"
    line = line_of(node, loc) if node is not None else None
    where = f"{file}:{line}" if file and line else file
    kind = err["type"]
    if kind == "extra_forbidden":
        missing = [".".join(str(k) for k in _walk(model, tuple(e["loc"]))[0])
                   for e in errors if e["type"] == "missing"]
        names = [m.rsplit(".", 1)[-1] for m in missing] + allowed
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return MoesimError("unknown field", file=where, field=field,
                           fix=f"{hint}remove it or use one of: {', '.join(allowed)}")
    if kind == "missing":
        return MoesimError("required field is missing", file=where, field=field, fix="add it")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    problem, _, fix = msg.partition("; ")
    if not fix:
        shown = repr(err.get("input"))[:60]
        problem = f"{msg} (got {shown})"
        bound = _BOUNDS.get(kind)
        fix = f"use {bound.format(**err.get('ctx', {}))}" if bound else "correct the value"
    return MoesimError(problem, file=where, field=field, fix=fix)


def parse_record(model: type[T], data: Any, *, file: str | None = None,
                 node: yaml.Node | None = None, prefix: str | None = None) -> T:
    """Validate plain data as `model`, converting errors to a one-line MoesimError."""
    if not isinstance(data, dict):
        raise MoesimError("expected a mapping of fields", file=file, field=prefix or "(top level)",
                          fix=f"write the file as 'key: value' lines for a {model.__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, model, file=file, node=node, prefix=prefix) from None


def load_record(model: type[T], path: Path) -> T:
    data, node = read_yaml(path)
    return parse_record(model, data, file=str(path), node=node)


def resolve(kind: str, name_or_path: str, folder: Path) -> Path:
    """Map a built-in name (`dgx-h100`) or a file path to the YAML file that defines it."""
    candidate = Path(name_or_path)
    try:
        exists = candidate.exists()
    except OSError:  # e.g. a name longer than the file system allows: not a file, so not found
        exists = False
    if candidate.suffix in (".yaml", ".yml") or exists:
        if not candidate.is_file():
            raise MoesimError(f"no such file {name_or_path!r}", field=kind,
                              fix=f"give an existing YAML file or a built-in {kind} name")
        return candidate
    path = folder / f"{name_or_path}.yaml"
    if len(path.name) > 255:
        raise MoesimError(f"no {kind} named {name_or_path[:40]!r}... ({len(name_or_path)} characters)", field=kind,
                          fix=f"give a built-in {kind} name or a YAML path")
    if path.is_file():
        return path
    known = available(folder)
    close = difflib.get_close_matches(name_or_path, known, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise MoesimError(f"unknown {kind} {name_or_path!r}", field=kind,
                      fix=f"{hint}known: {', '.join(known)}; or give a path to a YAML file")


def available(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))
