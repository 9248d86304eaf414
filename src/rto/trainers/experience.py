"""A scored rollout (`Experience`), gathered across processes, and its dump to rollouts.jsonl."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from rto import distributed


@dataclass
class Experience:
    """A scored rollout. Token tensors are (B, R), aligned with response tokens."""

    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    prompt_len: int
    mask: torch.Tensor  # (B, R) long
    ended: torch.Tensor  # (B,) bool
    logps: torch.Tensor
    ref_logps: torch.Tensor
    dpo_logps: torch.Tensor | None
    values: torch.Tensor | None
    scores: torch.Tensor  # (B,) raw RM scores (zeros in dpo-only)
    sample_index: torch.Tensor  # (B,) position in the global rollout batch
    engine_logps: torch.Tensor | None = None  # (B, R) the engine's own log-probs (engines that give them)


def gather_experience(acc, exp: Experience, pad_id: int) -> Experience:
    """Every process gets the whole global batch (prompts left-padded, responses right-padded)."""
    if acc.num_processes == 1:
        return exp
    P, R = exp.prompt_len, exp.mask.shape[1]
    sizes = distributed.global_sum(
        acc, [0] * acc.process_index + [P] + [0] * (acc.num_processes - acc.process_index - 1)
    )
    P_max = int(max(sizes.tolist()))

    def left(t, value):
        return torch.nn.functional.pad(t, (P_max - P, 0), value=value)

    ids = torch.cat([left(exp.input_ids[:, :P], pad_id), exp.input_ids[:, P:]], 1)
    attn = torch.cat([left(exp.attention_mask[:, :P], 0), exp.attention_mask[:, P:]], 1)
    row = {"ids": ids, "attn": attn}
    tok_fields = {"mask": exp.mask, "logps": exp.logps, "ref_logps": exp.ref_logps}
    if exp.dpo_logps is not None:
        tok_fields["dpo_logps"] = exp.dpo_logps
    if exp.values is not None:
        tok_fields["values"] = exp.values
    if exp.engine_logps is not None:
        tok_fields["engine_logps"] = exp.engine_logps
    out = {}
    for k, t in {**row, **tok_fields}.items():
        fill = pad_id if k == "ids" else 0
        out[k] = acc.gather(acc.pad_across_processes(t, dim=1, pad_index=fill))
    for k in ("ended", "scores", "sample_index"):
        out[k] = acc.gather(getattr(exp, k))
    del R
    return Experience(
        input_ids=out["ids"], attention_mask=out["attn"], prompt_len=P_max, mask=out["mask"],
        ended=out["ended"], logps=out["logps"], ref_logps=out["ref_logps"], dpo_logps=out.get("dpo_logps"),
        values=out.get("values"), scores=out["scores"], sample_index=out["sample_index"],
        engine_logps=out.get("engine_logps"),
    )  # fmt: skip


def dump_rollout(path: Path, it: int, tok, exp: Experience, tg) -> None:
    """Append one JSON record per sample: texts, ids and every per-token quantity behind the update
    (``tg``: the iteration's `Targets`)."""
    P = exp.prompt_len
    with path.open("a") as f:
        for b in range(exp.input_ids.shape[0]):
            n = int(exp.mask[b].sum())
            prompt_ids = exp.input_ids[b, :P][exp.attention_mask[b, :P].bool()].tolist()
            resp_ids = exp.input_ids[b, P : P + n].tolist()

            def seq(t, n=n, b=b):
                return None if t is None else [round(float(x), 6) for x in t[b, :n]]

            rec = {
                "iteration": it + 1,
                "sample": int(exp.sample_index[b]),
                "prompt": tok.decode(prompt_ids, skip_special_tokens=True),
                "response": tok.decode(resp_ids, skip_special_tokens=True),
                "prompt_ids": prompt_ids,
                "response_ids": resp_ids,
                "response_tokens": [tok.decode([i]) for i in resp_ids],
                "ended": bool(exp.ended[b]),
                "rm_score": float(exp.scores[b]),
                "rm_score_normalized": float(tg.norm_scores[b]),
                "logps": seq(exp.logps),
                "engine_logps": seq(exp.engine_logps),
                "ref_logps": seq(exp.ref_logps),
                "dpo_logps": seq(exp.dpo_logps),
                "values": seq(exp.values),
                "rewards": seq(tg.rewards.total),
                "reward_kl": seq(tg.rewards.kl),
                "reward_dpo": seq(tg.rewards.dpo),
                "reward_score": seq(tg.rewards.score),
                "reward_shaping_correction": seq(tg.rewards.shaping_correction),
                "advantages": seq(tg.advantages),
                "returns": seq(tg.returns),
            }
            f.write(json.dumps(rec) + "\n")


__all__ = ["Experience", "dump_rollout", "gather_experience"]
