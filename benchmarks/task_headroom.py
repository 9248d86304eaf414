"""Headroom of the controlled-sentiment task: SFT mean gold reward vs best-of-N from the SFT model.

Trains a tiny GPT-2 on generated reviews with a plain LM loop (whole text + EOS; this is a measurement
script, not the package's SFT trainer), samples N responses per held-out prompt and prints the mean gold
reward, best-of-N for several N, label statistics for Bradley-Terry labelling, and wall times.

    python benchmarks/task_headroom.py                 # defaults: tiny, 5k reviews, 300 steps
    python benchmarks/task_headroom.py --size micro --steps 200
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from transformers import GPT2LMHeadModel

from rto.tasks.gold import vader_gold_reward
from rto.tasks.labeling import preference_probability, sample_responses
from rto.tasks.sentiment import (
    build_sentiment_tokenizer,
    generate_prompts,
    generate_reviews,
    tiny_gpt2_config,
)


def train_lm(model, tok, texts, steps, batch, lr, seed):
    """AdamW, linear warmup (5%) then cosine decay, next-token loss on text + EOS."""
    g = torch.Generator().manual_seed(seed)
    ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(ids), (batch,), generator=g).tolist()
        rows = [ids[i] for i in idx]
        T = max(map(len, rows))
        x = torch.full((batch, T), tok.pad_token_id)
        mask = torch.zeros(batch, T, dtype=torch.long)
        for r, row in enumerate(rows):
            x[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        labels = x.masked_fill(mask == 0, -100)
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step:4d} loss {np.mean(losses[-50:]):.3f}", flush=True)
    model.eval()
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--n-reviews", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--prompts", type=int, default=64, help="held-out prompts")
    ap.add_argument("--n-samples", type=int, default=64, help="samples per prompt (the N of best-of-N)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--gen-batch", type=int, default=256)
    ap.add_argument("--tau", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    texts = generate_reviews(args.n_reviews, seed=args.seed)
    tok = build_sentiment_tokenizer(texts)
    model = GPT2LMHeadModel(tiny_gpt2_config(tok, args.size))
    n_params = sum(p.numel() for p in model.parameters())
    t_data = time.perf_counter() - t0
    print(
        f"corpus {len(texts)} reviews, vocab {len(tok)}, {args.size}: {n_params / 1e6:.2f}M params ({t_data:.1f}s)"
    )

    t0 = time.perf_counter()
    losses = train_lm(model, tok, texts, args.steps, args.batch, args.lr, args.seed)
    t_train = time.perf_counter() - t0
    print(f"train: {args.steps} steps x {args.batch} in {t_train:.1f}s ({t_train / args.steps:.3f} s/step), "
          f"final loss {np.mean(losses[-20:]):.3f}")  # fmt: skip

    prompts = generate_prompts(args.prompts, seed=args.seed + 1000)
    t0 = time.perf_counter()
    samples = sample_responses(
        model, tok, prompts, n_per_prompt=args.n_samples, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=1.0, seed=args.seed, batch_size=args.gen_batch,
    )  # fmt: skip
    t_gen = time.perf_counter() - t0
    flat_p = [p for p, rs in zip(prompts, samples) for _ in rs]
    flat_r = [r for rs in samples for r in rs]
    t0 = time.perf_counter()
    gold = np.array(vader_gold_reward(flat_p, flat_r)).reshape(len(prompts), args.n_samples)
    t_gold = time.perf_counter() - t0
    print(f"generate: {len(flat_r)} samples x {args.max_new_tokens} new tokens in {t_gen:.1f}s; "
          f"gold in {t_gold:.1f}s")  # fmt: skip

    ends = np.mean([r.rstrip().endswith((".", "!", "?")) for r in flat_r])
    words = np.mean([len(r.split()) for r in flat_r])
    print(f"samples: mean {words:.1f} words, {ends:.0%} end with . ! or ?")
    for p, r, g in list(zip(flat_p, flat_r, gold.ravel()))[:: max(1, len(flat_r) // 6)]:
        print(f"  [{g:+.2f}] {p}|{r}")

    sft_mean = gold.mean()
    print(f"\nSFT mean gold: {sft_mean:+.3f} (std {gold.std():.3f}, "
          f"{(gold > 0.5).mean():.0%} > 0.5, {(gold < -0.5).mean():.0%} < -0.5)")  # fmt: skip
    n = 1
    while n <= args.n_samples:
        bon = gold[:, :n].max(axis=1).mean()
        print(f"best-of-{n:<3d} mean gold: {bon:+.3f}")
        n *= 2

    # Label statistics for Bradley-Terry labelling of two samples per prompt.
    ga, gb = gold[:, 0], gold[:, 1]
    for tau in sorted({0.05, 0.1, 0.2, args.tau}):
        p = np.array(
            [preference_probability(a, b, tau) for a, b in zip(gold[:, ::2].ravel(), gold[:, 1::2].ravel())]
        )
        print(f"tau {tau:<5}: expected label agreement with gold order {np.maximum(p, 1 - p).mean():.3f}")
    print(f"|g_a - g_b| of sample pairs: median {np.median(np.abs(ga - gb)):.3f}")


if __name__ == "__main__":
    main()
