"""How a serving step's MoE layers bring tokens to their experts, from the plan and the runtime.

Its own module (no routing kernels behind it) so the VRAM ledger can ask it too.
"""
from __future__ import annotations


def moe_exchange(sc) -> str:
    """How a serving step's MoE layers bring tokens to their experts.

    `replicated`: no attention DP inside the EP group (ep x etp = tp), so attention's TP all-reduce
    has left every GPU all of the group's tokens; serving engines run their local experts on all of
    them and sum the partial outputs with one all-reduce over the group, as after a TP MLP (vLLM
    FusedMoE `reduce_results`, SGLang's MoE layers without an all-to-all backend, TensorRT-LLM
    without attention DP) - no token is dispatched and no EP library runs. Otherwise the ranks
    hold different tokens and the scenario's `runtime.ep_exchange` moves them: `all_to_all` (an EP
    library such as DeepEP) or `allgather_reducescatter`."""
    if sc.plan.ep * sc.plan.etp == sc.plan.tp:
        return "replicated"
    return sc.input.runtime.ep_exchange
