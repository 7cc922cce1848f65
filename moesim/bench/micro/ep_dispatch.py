"""EP dispatch and combine over torch.distributed all_to_all_single, with real skewed token counts.

Setup (what the simulator's traffic model assumes, moesim.costs.traffic): E routed experts placed
contiguously, rank r holds experts [r E/R, (r+1) E/R); each rank routes its own `tokens` tokens
with the model's router law through moesim's sampler (`sample_routing(model, skew, tokens,
seed=seed, layers=[layer], batch=rank)`: one popularity for all ranks, independent draws per
rank). A token is sent once to every rank holding at least one of its k experts (DeepEP's
per-rank deduplication), itself included; the send buffer is ordered by destination rank, then
token. Combine returns every received row to its sender in the same order.

Payload: `hidden` channels of 2 bytes (the size of BF16), moved as bfloat16 (all_to_all is a
byte copy), built as int16 so each row carries its identity: [source rank, token & 0x7FFF,
token >> 15, destination rank, then (131 s + 7 t + 3 j) mod 2^15 for channel j]. Correctness
before timing: every rank recomputes from all ranks' routing exactly which rows it must receive
and compares the whole receive buffer, so a token lost, duplicated, reordered or delivered to
the wrong rank is a wrong row; the expert rank then marks each row (destination + 2^14) and
combine must bring back exactly the sender's rows with that mark. Wrong rows are summed over
ranks; a wrong case is not timed.

Times are the all_to_all_single calls only (the permutation into and out of the send layout is
excluded); per op the median over iterations of the slowest rank, barrier before each.
`dispatch_bytes` / `combine_bytes` are summed over all ranks, local rows included;
`offrank_bytes` leaves out the rows a rank sends to itself.
"""
from __future__ import annotations

import numpy as np

from moesim.bench.micro.clock import distributed_median_seconds
from moesim.bench.micro.launch import launch
from moesim.core.errors import MoesimError

CHANNEL_BYTES = 2
HEADER = 4
COMBINE_MARK = 1 << 14
MAX_TOKENS = 1 << 30  # token ids are carried in two 15-bit channels


def routed_masks(model_name: str, skew_text: str, tokens: int, ranks: int, *, seed: int,
                 layer: int) -> tuple[np.ndarray, dict]:
    """bool [ranks (source), tokens, ranks (destination)]: which ranks each token is sent to."""
    from moesim.costs.routing import parse_skew, sample_routing
    from moesim.specs.model import load_model

    model = load_model(model_name)
    experts, k = model.moe.num_experts, model.moe.num_experts_per_tok
    if experts % ranks:
        divisors = [d for d in range(1, experts + 1) if experts % d == 0]
        raise MoesimError(f"{ranks} ranks do not divide the {experts} experts of {model_name}", field="ranks",
                          fix=f"use one of {', '.join(map(str, divisors))}")
    if not 0 <= layer < model.num_moe_layers:
        raise MoesimError(f"MoE layer {layer} is outside 0..{model.num_moe_layers - 1}", field="layer",
                          fix="give the index of a MoE layer")
    skew = parse_skew(skew_text, field="skew")
    per_rank = experts // ranks
    masks = np.zeros((ranks, tokens, ranks), dtype=bool)
    for rank in range(ranks):
        choices = sample_routing(model, skew, tokens, seed=seed, layers=[layer], batch=rank).choices[0]
        dest = choices.astype(np.int64) // per_rank
        masks[rank, np.repeat(np.arange(tokens), k), dest.ravel()] = True
    return masks, {"experts": experts, "topk": k, "skew": skew.label()}


def _encode(torch, src: int, tokens, dst: int, hidden: int, device):
    """int16 [len(tokens), hidden] rows carrying (src, token, dst) and a per-channel pattern."""
    t = tokens.to(device=device, dtype=torch.int64)[:, None]
    j = torch.arange(hidden, device=device, dtype=torch.int64)[None, :]
    rows = (src * 131 + t * 7 + j * 3) % 32768
    rows[:, 0] = src
    rows[:, 1] = t[:, 0] & 0x7FFF
    rows[:, 2] = t[:, 0] >> 15
    rows[:, 3] = dst
    return rows.to(torch.int16)


def _ep_case(torch, dist, rank: int, world: int, device, tokens: int, masks: np.ndarray, *, hidden: int,
             warmup: int, iters: int, corrupt: bool) -> tuple[int, int, dict | None]:
    """(wrong dispatch rows, wrong combine rows, summed over ranks; the row, None when wrong)."""
    mask = torch.from_numpy(masks)  # [src, token, dst]
    counts = mask.sum(dim=1)  # [src, dst] rows
    send_splits = counts[rank].tolist()
    recv_splits = counts[:, rank].tolist()
    send = torch.cat([_encode(torch, rank, mask[rank, :, d].nonzero()[:, 0], d, hidden, device)
                      for d in range(world)])
    expected = torch.cat([_encode(torch, s, mask[s, :, rank].nonzero()[:, 0], rank, hidden, device)
                          for s in range(world)])
    recv = torch.empty_like(expected)
    processed = torch.empty_like(expected)
    back = torch.empty_like(send)

    def dispatch() -> None:
        dist.all_to_all_single(recv.view(torch.bfloat16), send.view(torch.bfloat16), recv_splits, send_splits)

    def combine() -> None:
        dist.all_to_all_single(back.view(torch.bfloat16), processed.view(torch.bfloat16), send_splits, recv_splits)

    dispatch()
    if corrupt and rank == int(np.flatnonzero(counts.sum(dim=0).numpy())[0]):
        recv[0, 1] ^= 1  # a wrong token id at the first rank that receives anything
    bad_dispatch = int((recv != expected).any(dim=1).sum())
    processed.copy_(recv)
    processed[:, 3] += COMBINE_MARK  # the expert rank's mark
    combine()
    returned = send.clone()
    returned[:, 3] += COMBINE_MARK
    bad_combine = int((back != returned).any(dim=1).sum())

    bad = torch.tensor([bad_dispatch, bad_combine], dtype=torch.int64, device=device)
    dist.all_reduce(bad)
    bad_dispatch, bad_combine = bad.tolist()
    if bad_dispatch or bad_combine:
        return bad_dispatch, bad_combine, None
    dispatch_s = distributed_median_seconds(dispatch, device=device, warmup=warmup, iters=iters)
    combine_s = distributed_median_seconds(combine, device=device, warmup=warmup, iters=iters)
    total_rows = int(counts.sum())
    local_rows = int(counts.diagonal().sum())
    recv_rows = counts.sum(dim=0).double()
    row_bytes = hidden * CHANNEL_BYTES
    row = {"tokens_per_rank": tokens, "hidden": hidden, "ranks": world,
           "dispatch_time_s": dispatch_s, "combine_time_s": combine_s,
           "dispatch_bytes": total_rows * row_bytes, "combine_bytes": total_rows * row_bytes,
           "offrank_bytes": (total_rows - local_rows) * row_bytes,
           "max_recv_tokens": int(recv_rows.max()), "mean_recv_tokens": float(recv_rows.mean()),
           "recv_imbalance": float(recv_rows.max() / recv_rows.mean()) if total_rows else 0.0}
    return 0, 0, row


def _worker(rank: int, world: int, device, *, cases: list[tuple[int, np.ndarray]], hidden: int, warmup: int,
            iters: int, corrupt: bool) -> dict:
    import torch
    import torch.distributed as dist

    rows, wrong_dispatch, wrong_combine = [], 0, 0
    for tokens, masks in cases:
        bad_dispatch, bad_combine, row = _ep_case(torch, dist, rank, world, device, tokens, masks, hidden=hidden,
                                                  warmup=warmup, iters=iters, corrupt=corrupt)
        wrong_dispatch += bad_dispatch
        wrong_combine += bad_combine
        if row is not None:
            rows.append(row)
    return {"rows": rows, "wrong_dispatch": wrong_dispatch, "wrong_combine": wrong_combine}


def run_ep_dispatch(*, backend: str, ranks: int, sizes: list[int], model: str, skew: str, hidden: int | None,
                    seed: int, layer: int, warmup: int, iters: int,
                    corrupt: bool = False) -> tuple[dict, list[dict], dict]:
    """EP dispatch + combine for each tokens-per-rank in `sizes`; (parameters, rows, check).

    `hidden` defaults to the model's hidden size. `corrupt` changes one token id after dispatch
    at the first receiving rank (test hook: dispatch and combine checks must fail).
    """
    from moesim.specs.model import load_model

    spec = load_model(model)
    hidden = int(hidden or spec.hidden_size)
    if hidden <= HEADER:
        raise MoesimError(f"hidden size {hidden} leaves no room for the {HEADER}-channel row header",
                          field="hidden", fix=f"use more than {HEADER} channels")
    cases, info = [], {}
    for tokens in sizes:
        if not 0 < int(tokens) <= MAX_TOKENS:
            raise MoesimError(f"tokens per rank must be in 1..{MAX_TOKENS}, got {tokens}", field="sizes",
                              fix="give token counts per rank")
        masks, info = routed_masks(model, skew, int(tokens), ranks, seed=seed, layer=layer)
        cases.append((int(tokens), masks))
    parameters = {"model": model, "skew": info["skew"], "experts": info["experts"], "topk": info["topk"],
                  "placement": "contiguous: rank r holds experts [r E/R, (r+1) E/R)",
                  "dedup": "one copy per (token, destination rank)", "hidden": hidden,
                  "payload_dtype": "bfloat16 (2 bytes per channel)", "tokens_per_rank": [int(s) for s in sizes],
                  "ranks": ranks, "process_group": "nccl" if backend == "cuda" else "gloo", "seed": seed,
                  "layer": layer, "warmup": warmup, "iters": iters,
                  "time": "all_to_all_single only; median over iterations of the slowest rank"}
    result = launch(_worker, ranks=ranks, backend=backend, cases=cases, hidden=hidden, warmup=warmup,
                    iters=iters, corrupt=corrupt)
    rows = [{**row, "topk": info["topk"], "experts": info["experts"], "skew": info["skew"]}
            for row in result["rows"]]
    check = {"passed": result["wrong_dispatch"] == 0 and result["wrong_combine"] == 0,
             "wrong_dispatch_rows": result["wrong_dispatch"], "wrong_combine_rows": result["wrong_combine"]}
    return parameters, rows, check
