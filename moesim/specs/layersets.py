"""Parse which decoder layers a rule names ("range(3, 61)", "i % 4 != 3", "none", "all").

Model files describe layer patterns as short rules instead of long index lists; this is the one
place that reads them, with a fixed grammar (no eval), so a typo is an error, not a surprise.
"""
from __future__ import annotations

import re

from moesim.core.errors import MoesimError

_RANGE = re.compile(r"^range\(\s*(\d+)\s*,\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$")
_MOD = re.compile(r"^i\s*%\s*(\d+)\s*(==|!=)\s*(\d+)$")
GRAMMAR = "'none', 'all', 'range(a, b)', 'range(a, b, step)', 'i % m == r' or 'i % m != r'"


def layer_indices(rule: str, num_layers: int, *, field: str = "rule") -> tuple[int, ...]:
    """The 0-based layer indices a rule selects among `num_layers` layers."""
    text = rule.strip()
    if text == "none":
        return ()
    if text == "all":
        return tuple(range(num_layers))
    match = _RANGE.match(text)
    if match:
        start, stop = int(match.group(1)), int(match.group(2))
        step = int(match.group(3) or 1)
        if step == 0 or stop > num_layers:
            raise MoesimError(f"{rule!r} reaches past the model's {num_layers} layers or has step 0",
                              field=field, fix=f"keep stop <= {num_layers} and step >= 1")
        return tuple(range(start, stop, step))
    match = _MOD.match(text)
    if match:
        mod, op, rem = int(match.group(1)), match.group(2), int(match.group(3))
        if mod == 0:
            raise MoesimError("modulus 0 in layer rule", field=field, fix="use i % m with m >= 1")
        keep = (lambda i: i % mod == rem) if op == "==" else (lambda i: i % mod != rem)
        return tuple(i for i in range(num_layers) if keep(i))
    raise MoesimError(f"cannot read layer rule {rule!r}", field=field, fix=f"write one of {GRAMMAR}")
