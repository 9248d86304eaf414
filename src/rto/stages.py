"""The pipeline's stages as plain functions: the demo's controlled-sentiment world and what the demo and
`rto experiment` build on it.

    data -> init (tokenizer + tiny GPT-2, or a pretrained model) -> SFT (= pi_ref) -> labels (pairs sampled
    from SFT, Bradley-Terry on the gold reward) -> reward model, DPO -> PPO/RTO -> evaluation

Each stage is ``stage_x(cfg, root)`` (``cfg`` a resolved ``rto.demo.DemoConfig``) and finds its inputs by
the folder layout under ``root``; the trainers behind them (``train_reward``, ``train_preference``,
``ppo_config`` + ``run_rl``) also take explicit paths, which is how the experiments' cells use them on
fractions of the data, other losses or other betas. ``stage_signatures`` says which settings each stage's
output depends on. ``rto.runner`` runs and caches them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rto.errors import ConfigError, RtoError
from rto.jsonl import read_jsonl, write_jsonl

if TYPE_CHECKING:
    from rto.demo import DemoConfig

N_TRAIN_PROMPTS = 4000  # training prompts written (at least n_pref_prompts)


# ----------------------------------------------------------------------------- small helpers


def split_prompts(n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """Held-out prompts: the first ``n_eval`` distinct openings of one prompt stream. Training prompts:
    ``n_train`` draws of another stream with every held-out opening removed (so they are disjoint;
    repeats among training prompts are kept, as in the corpus)."""
    from rto.tasks.sentiment import generate_prompts

    eval_prompts: list[str] = []
    seen: set[str] = set()
    stream_seed = seed + 10_000
    while len(eval_prompts) < n_eval:
        for p in generate_prompts(max(4 * n_eval, 256), seed=stream_seed):
            if p not in seen:
                seen.add(p)
                eval_prompts.append(p)
                if len(eval_prompts) == n_eval:
                    break
        stream_seed += 1
        if stream_seed > seed + 10_050:
            raise RtoError(f"could not find {n_eval} distinct evaluation prompts")
    train: list[str] = []
    stream_seed = seed
    while len(train) < n_train:
        train.extend(p for p in generate_prompts(2 * n_train, seed=stream_seed) if p not in seen)
        stream_seed += 1
    return train[:n_train], eval_prompts


def gold_hook(gold_fn: Callable) -> Callable:
    """PPO rollout hook: the gold reward of the rollout samples, logged per iteration (measurement only)."""
    import numpy as np

    def hook(iteration: int, prompts: list[str], responses: list[str]) -> dict[str, float]:
        g = np.asarray(gold_fn(prompts, responses), dtype=float)
        return {"gold": float(g.mean()), "gold_std": float(g.std())}

    return hook


# ----------------------------------------------------------------------------- DPO token rewards


def dpo_token_rewards(
    dpo, ref, tokenizer, prompts: list[str], responses: list[str], beta: float, batch_size=64
):
    """For each (prompt, response): the response tokens (with EOS) and beta * (log pi_dpo - log pi_ref)
    of each token. Tokenized as in training (prompt and completion separately, one EOS)."""
    import torch

    from rto import models
    from rto.data.collate import pad_sequences
    from rto.data.tokenize import encode_completion, encode_prompt

    out = []
    for start in range(0, len(prompts), batch_size):
        ps, rs = prompts[start : start + batch_size], responses[start : start + batch_size]
        p_ids = [encode_prompt(tokenizer, p) for p in ps]
        c_ids = [encode_completion(tokenizer, r) for r in rs]
        seqs = [a + b for a, b in zip(p_ids, c_ids)]
        ids = pad_sequences(seqs, tokenizer.pad_token_id, side="right")
        attn = pad_sequences([[1] * len(s) for s in seqs], 0, side="right")
        with torch.inference_mode():
            lp_dpo = models.response_token_logps(dpo, ids, attn)
            lp_ref = models.response_token_logps(ref, ids, attn)
        for b, (pi, ci) in enumerate(zip(p_ids, c_ids)):
            sl = slice(len(pi) - 1, len(pi) - 1 + len(ci))
            r = (beta * (lp_dpo[b, sl] - lp_ref[b, sl])).tolist()
            toks = [tokenizer.decode([t]) for t in ci]
            out.append({"tokens": toks, "rewards": r, "total": float(sum(r))})
    return out


def stage_signatures(cfg: DemoConfig) -> dict[str, dict]:
    """The settings each stage's output depends on (its own and its inputs'): --reuse reuses a stage only
    when they are unchanged."""
    data = {
        **_sig(cfg, "n_reviews", "n_eval_prompts", "seed"),
        "train_prompts": max(cfg.n_pref_prompts, N_TRAIN_PROMPTS),
        # set only when used, so the embedded world's signatures (and cached runs) stay as they were
        **{k: getattr(cfg, k) for k in ("model", "lora") if getattr(cfg, k)},
    }
    model = {**data, **_sig(cfg, "size")}
    sft = {**model, **_sig(cfg, "sft_steps", "sft_batch_size", "sft_lr")}
    label = {
        **sft,
        **_sig(cfg, "n_pref_prompts", "n_heldout_pairs", "tau", "max_new_tokens", "gold_reward"),
        # generation settings only when not the defaults, so that earlier runs keep their signatures
        **_non_default(cfg, "engine", "temperature", "top_p"),
    }
    rm = {**label, **_sig(cfg, "rm_epochs", "rm_lr", "pref_batch_size")}
    dpo = {**label, **_sig(cfg, "dpo_epochs", "dpo_lr", "dpo_beta", "pref_batch_size")}
    rl = {
        **rm,
        **dpo,
        **_sig(cfg, "mini_batch_size", "actor_lr", "critic_lr", "ppo_epochs", "beta1", "beta2", "beta3"),
        **_non_default(cfg, "num_samples_per_prompt"),
    }
    ev = {**rl, **_sig(cfg, "seeds", "eval_samples", "best_of_n")}
    return {
        "data": data,
        "model": model,
        "sft": sft,
        "label": label,
        "rm": rm,
        "dpo": dpo,
        "rl": rl,
        "eval": ev,
    }


def _sig(cfg: DemoConfig, *names: str) -> dict:
    return {n: getattr(cfg, n) for n in names}


def _non_default(cfg: DemoConfig, *names: str) -> dict:
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n) != defaults[n]}


# ----------------------------------------------------------------------------- stages
# Each stage is func(cfg, root, ...) and finds its inputs by the folder layout under root.


def base_model(cfg: DemoConfig, root: Path) -> str:
    """The model SFT starts from: the embedded world's fresh GPT-2 (init/), or the pretrained --model."""
    if not cfg.model:
        return str(root / "init")
    from rto.pretrained import resolve_model

    return resolve_model(cfg.model)


def max_length(cfg: DemoConfig) -> int:
    """Longest prompt + response in training: review openings are short; chat prompts carry the template."""
    return 256 if cfg.model else 128


def stage_data(cfg: DemoConfig, root: Path) -> None:
    if cfg.model:
        return _chat_data(cfg, root)
    from rto.tasks.sentiment import generate_examples

    data = root / "data"
    examples = generate_examples(cfg.n_reviews, seed=cfg.seed)
    write_jsonl(data / "sft.jsonl", examples)
    # PPO cycles through the training prompts (reshuffled each pass), so their number need not follow the
    # rollout budget; the preference pairs use the first n_pref_prompts of them.
    train, held_out = split_prompts(max(cfg.n_pref_prompts, N_TRAIN_PROMPTS), cfg.n_eval_prompts, cfg.seed)
    write_jsonl(data / "prompts_train.jsonl", [{"prompt": p} for p in train])
    write_jsonl(data / "prompts_eval.jsonl", [{"prompt": p} for p in held_out])
    print(
        f"{len(examples)} reviews; {len(train)} training prompts ({len(set(train))} distinct openings), "
        f"{len(held_out)} held-out prompts (disjoint)"
    )


def _chat_data(cfg: DemoConfig, root: Path) -> None:
    """Real user turns from chatterbot-corpus, rendered with the model's chat template (so every stage
    sees plain prompt strings that end where the assistant's reply starts); the held-out prompts are
    the first n_eval_prompts distinct turns, never used for preferences, SFT or PPO."""
    from rto import models
    from rto.data.tokenize import render_prompt
    from rto.pretrained import chatterbot_conversations

    data = root / "data"
    convs = chatterbot_conversations(seed=cfg.seed)
    need = cfg.n_eval_prompts + cfg.n_pref_prompts
    if len(convs) < need:
        raise ConfigError(
            f"chatterbot-corpus has {len(convs)} distinct prompts: fields 'n_eval_prompts' ({cfg.n_eval_prompts}) + "
            f"'n_pref_prompts' ({cfg.n_pref_prompts}) must be at most that"
        )
    base = base_model(cfg, root)
    tok = models.load_tokenizer(base)

    def chat(user: str) -> list[dict]:
        return [{"role": "user", "content": user}]

    def prompt_rows(pairs) -> list[dict]:
        return [{"prompt": render_prompt(tok, chat(u)), "user": u} for u, _ in pairs]

    held_out, train = convs[: cfg.n_eval_prompts], convs[cfg.n_eval_prompts :]
    write_jsonl(data / "prompts_train.jsonl", prompt_rows(train))
    write_jsonl(data / "prompts_eval.jsonl", prompt_rows(held_out))
    # SFT data (used when sft_steps > 0): the corpus's own replies, in the conversational format.
    sft = [{"prompt": chat(u), "completion": [{"role": "assistant", "content": r}]} for u, r in train if r]
    write_jsonl(data / "sft.jsonl", sft)
    print(
        f"chatterbot-corpus: {len(train)} training prompts, {len(held_out)} held-out prompts (disjoint), "
        f"{len(sft)} replies for SFT; chat template of {base}"
    )


def stage_init(cfg: DemoConfig, root: Path) -> None:
    if cfg.model:  # a pretrained model: make sure it loads (and convert the packaged GGUF once)
        from rto import models

        path = base_model(cfg, root)
        n = sum(p.numel() for p in models.load_causal_lm(path, models.load_tokenizer(path)).parameters())
        (root / "init").mkdir(parents=True, exist_ok=True)
        print(f"pretrained model {cfg.model} ({path}): {n / 1e6:.1f}M parameters")
        return
    import torch
    from transformers import GPT2LMHeadModel

    from rto.tasks.sentiment import build_sentiment_tokenizer, tiny_gpt2_config

    rows = read_jsonl(root / "data" / "sft.jsonl")
    tok = build_sentiment_tokenizer(r["prompt"] + r["completion"] for r in rows)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(tiny_gpt2_config(tok, cfg.size))
    model.save_pretrained(root / "init")
    tok.save_pretrained(root / "init")
    n = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {len(tok)} tokens; GPT-2 '{cfg.size}': {n / 1e6:.2f}M parameters")


def stage_sft(cfg: DemoConfig, root: Path) -> None:
    from rto.config import SFTConfig
    from rto.trainers.sft import train_sft

    if cfg.sft_steps == 0:
        return copy_model(base_model(cfg, root), root / "sft")
    train_sft(
        SFTConfig(
            model=base_model(cfg, root), data=str(root / "data" / "sft.jsonl"), output_dir=str(root / "sft"),
            seed=cfg.seed, learning_rate=cfg.sft_lr, max_steps=cfg.sft_steps, per_device_batch_size=cfg.sft_batch_size,
            warmup_ratio=0.05, max_length=max_length(cfg), lora=cfg.lora, **_common_train(cfg),
        )
    )  # fmt: skip


def copy_model(src: str, dst: Path) -> None:
    """The pretrained model as the SFT model: a local folder's files are hard-linked (copied across file
    systems); a hub id is loaded and saved."""
    dst.mkdir(parents=True, exist_ok=True)
    if Path(src).is_dir():
        for f in Path(src).iterdir():
            if f.is_file():
                try:
                    os.link(f, dst / f.name)
                except OSError:
                    shutil.copy2(f, dst / f.name)
    else:
        from rto import models

        tok = models.load_tokenizer(src)
        models.load_causal_lm(src, tok).save_pretrained(dst, safe_serialization=True)
        tok.save_pretrained(dst)
    print(f"SFT model = the pretrained model {src} (sft_steps 0), in {dst}")


def load_lm(path: Path):
    from rto import models

    tok = models.load_tokenizer(str(path), padding_side="left")
    model = models.freeze(models.load_causal_lm(str(path), tok))
    models.disable_dropout(model)
    return tok, model


def stage_label(cfg: DemoConfig, root: Path) -> None:
    from rto.label import label_pairs, label_stats, write_preferences
    from rto.tasks.gold import load_gold_reward

    gold_fn = load_gold_reward(cfg.gold_reward)
    labels = root / "data" / "labels"
    tok, model = load_lm(root / "sft")
    train = [r["prompt"] for r in read_jsonl(root / "data" / "prompts_train.jsonl")][: cfg.n_pref_prompts]
    held_out = [r["prompt"] for r in read_jsonl(root / "data" / "prompts_eval.jsonl")]
    kw = dict(tau=cfg.tau, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
              engine=cfg.engine, batch_size=256)  # fmt: skip
    prefs, train_stats = label_pairs(model, tok, train, gold_fn, seed=cfg.seed, **kw)
    write_preferences(labels / "preferences.jsonl", prefs)
    # Held-out pairs: on the evaluation prompts (never trained on), to check the learned rewards.
    per = -(-cfg.n_heldout_pairs // len(held_out))
    extra, extra_stats = label_pairs(
        model, tok, held_out, gold_fn, pairs_per_prompt=per, seed=cfg.seed + 1, **kw
    )
    extra = extra._replace(rows=extra.rows[: cfg.n_heldout_pairs], gold=extra.gold[: cfg.n_heldout_pairs])
    write_preferences(labels / "heldout_pairs.jsonl", extra)
    stats = {
        "train": train_stats,
        "heldout": label_stats(extra, extra_stats["empty_skipped"]),
        "tau": cfg.tau,
    }
    (labels / "label_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    s = stats["train"]
    print(
        f"{s['pairs']} training pairs ({s['identical_skipped']} identical, {s['empty_skipped']} with an empty "
        f"response skipped); chosen has the higher gold in {s['agreement_with_gold']:.1%}; "
        f"{stats['heldout']['pairs']} held-out pairs"
    )


def train_rm(cfg: DemoConfig, sft: Path, data: Path, output_dir: Path, **over) -> None:
    """A reward model on ``data`` from the SFT model, with the world's settings (``over``: RewardConfig
    fields that differ, e.g. num_epochs, max_steps, resume)."""
    from rto.config import RewardConfig
    from rto.trainers.reward import train_reward

    kw = dict(
        model=str(sft), data=str(data), output_dir=str(output_dir), seed=cfg.seed, learning_rate=cfg.rm_lr,
        num_epochs=cfg.rm_epochs, per_device_batch_size=cfg.pref_batch_size, warmup_ratio=0.05,
        max_length=max_length(cfg), lora=cfg.lora, **_common_train(cfg),
    )  # fmt: skip
    train_reward(RewardConfig(**{**kw, **over}))


def train_preference(cfg: DemoConfig, sft: Path, data: Path, output_dir: Path, **over) -> None:
    """A preference-trained policy (DPO by default; ``over``: DPOConfig fields that differ, e.g.
    loss_type, beta, num_epochs, max_steps, resume) on ``data`` from the SFT model."""
    from rto.config import DPOConfig
    from rto.trainers.dpo import train_dpo

    kw = dict(
        model=str(sft), data=str(data), output_dir=str(output_dir), seed=cfg.seed, learning_rate=cfg.dpo_lr,
        num_epochs=cfg.dpo_epochs, per_device_batch_size=cfg.pref_batch_size, beta=cfg.dpo_beta,
        warmup_ratio=0.05, max_length=max_length(cfg), lora=cfg.lora, **_common_train(cfg),
    )  # fmt: skip
    train_dpo(DPOConfig(**{**kw, **over}))


def stage_rm(cfg: DemoConfig, root: Path) -> None:
    train_rm(cfg, root / "sft", root / "data" / "labels" / "preferences.jsonl", root / "rm")


def stage_dpo(cfg: DemoConfig, root: Path) -> None:
    train_preference(cfg, root / "sft", root / "data" / "labels" / "preferences.jsonl", root / "dpo")


def _common_train(cfg: DemoConfig) -> dict:
    return dict(progress=cfg.progress, logging_steps=1, save_total_limit=1)


def ppo_config(cfg: DemoConfig, root: Path, mode: str, k: int):
    """The PPO/RTO config: identical for both methods except the reward mode (RTO: beta1 > 0, DPO model)."""
    from rto.config import PPOConfig

    return PPOConfig(
        policy=str(root / "sft"), ref_model=str(root / "sft"), reward_model=str(root / "rm"),
        dpo_model=str(root / "dpo") if mode == "rto" else None, reward_mode=mode,
        prompts=str(root / "data" / "prompts_train.jsonl"), output_dir=str(root / f"{mode}-seed{k}"),
        seed=cfg.seed + k, beta1=cfg.beta1, beta2=cfg.beta2, beta3=cfg.beta3, engine=cfg.engine,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        num_samples_per_prompt=cfg.num_samples_per_prompt,
        num_iterations=cfg.ppo_iterations, rollout_batch_size=cfg.rollout_batch_size,
        mini_batch_size=cfg.mini_batch_size, ppo_epochs=cfg.ppo_epochs, actor_lr=cfg.actor_lr,
        critic_lr=cfg.critic_lr, warmup_ratio=0.0, lr_scheduler="constant",
        dump_rollouts=max(1, cfg.ppo_iterations // 4), progress=cfg.progress,
        max_prompt_length=max_length(cfg) // 2, lora=cfg.lora,
    )  # fmt: skip


def run_rl(pcfg, gold_reward: str) -> None:
    """Train one PPO-family policy, logging the gold reward of each iteration's rollout samples."""
    from rto.tasks.gold import load_gold_reward
    from rto.trainers.ppo import train_ppo

    train_ppo(pcfg, rollout_hook=gold_hook(load_gold_reward(gold_reward)))


def stage_rl(cfg: DemoConfig, root: Path, mode: str, k: int, resume: bool = False) -> None:
    pcfg = ppo_config(cfg, root, mode, k)
    pcfg.resume = resume
    run_rl(pcfg, cfg.gold_reward)


def stage_eval(cfg: DemoConfig, root: Path) -> None:
    import numpy as np

    from rto import models
    from rto.eval import evaluate, format_table, write_eval
    from rto.tasks.gold import load_gold_reward

    gold_fn = load_gold_reward(cfg.gold_reward)
    sft, rm, dpo, eval_dir = root / "sft", root / "rm", root / "dpo", root / "eval"
    labels = root / "data" / "labels"
    held_out = [r["prompt"] for r in read_jsonl(root / "data" / "prompts_eval.jsonl")]
    runs = {f"{m}-seed{k}": str(root / f"{m}-seed{k}") for k in range(cfg.seeds) for m in ("ppo", "rto")}
    policies = {"sft": str(sft), "dpo": str(dpo), **runs}
    report, records = evaluate(
        policies, held_out, str(sft), gold_fn, reward_model=str(rm), samples_per_prompt=cfg.eval_samples,
        seeds=1, seed=cfg.seed + 777, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=cfg.top_p, engine=cfg.engine, best_of=cfg.best_of_n,
        batch_size=128, progress=cfg.progress, gold_name=cfg.gold_reward,
    )  # fmt: skip
    write_eval(eval_dir, report, records)
    print(format_table(report))

    # The learned rewards on held-out pairs: accuracy of the RM and of DPO's implicit reward, and the
    # token rewards beta * (log pi_dpo - log pi_ref) behind the report's pictures.
    pairs = read_jsonl(labels / "heldout_pairs.jsonl")
    gold = read_jsonl(labels / "heldout_pairs.gold.jsonl")
    tok, ref = load_lm(sft)
    _, dpo_model = load_lm(dpo)
    prompts = [p["prompt"] for p in pairs]
    chosen = dpo_token_rewards(dpo_model, ref, tok, prompts, [p["chosen"] for p in pairs], cfg.dpo_beta)
    rejected = dpo_token_rewards(dpo_model, ref, tok, prompts, [p["rejected"] for p in pairs], cfg.dpo_beta)
    rm_tok = models.load_tokenizer(str(rm), padding_side="right")
    rm_model = models.freeze(models.load_score_model(str(rm), rm_tok))
    rm_c = rm_text_scores(rm_model, rm_tok, prompts, [p["chosen"] for p in pairs])
    rm_r = rm_text_scores(rm_model, rm_tok, prompts, [p["rejected"] for p in pairs])
    rows = []
    for i, p in enumerate(pairs):
        rows.append(
            {
                "prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                "chosen_gold": gold[i]["chosen_gold"], "rejected_gold": gold[i]["rejected_gold"],
                "dpo_chosen": chosen[i]["total"], "dpo_rejected": rejected[i]["total"],
                "rm_chosen": rm_c[i], "rm_rejected": rm_r[i],
                "chosen_tokens": chosen[i]["tokens"], "chosen_token_rewards": chosen[i]["rewards"],
                "rejected_tokens": rejected[i]["tokens"], "rejected_token_rewards": rejected[i]["rewards"],
            }
        )  # fmt: skip
    write_jsonl(eval_dir / "heldout_pairs_scored.jsonl", rows)
    dc = np.array([r["dpo_chosen"] for r in rows])
    dr = np.array([r["dpo_rejected"] for r in rows])
    print(
        f"held-out pairs: DPO implicit reward ranks chosen first in {np.mean(dc > dr):.1%}, "
        f"RM in {np.mean(np.array(rm_c) > np.array(rm_r)):.1%}"
    )


def rm_text_scores(
    rm, rm_tok, prompts: list[str], responses: list[str], batch_size: int = 128
) -> list[float]:
    """Raw scores of a reward model for (prompt, response) texts, tokenized with the RM's own tokenizer."""
    from rto.scoring import score_texts

    return score_texts(rm, rm_tok, prompts, responses, batch_size=batch_size).tolist()


__all__ = [
    "N_TRAIN_PROMPTS",
    "split_prompts",
    "stage_signatures",
    "stage_data",
    "stage_init",
    "stage_sft",
    "stage_label",
    "stage_rm",
    "stage_dpo",
    "stage_rl",
    "stage_eval",
    "train_rm",
    "train_preference",
    "ppo_config",
    "run_rl",
    "dpo_token_rewards",
    "rm_text_scores",
]
