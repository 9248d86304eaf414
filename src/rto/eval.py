"""`rto eval`: policies compared on held-out prompts by a gold reward, with the numbers that reveal how
they got there.

For each policy, ``num_samples_per_prompt`` responses are sampled per prompt for each of ``seeds`` sampling
seeds, and every response gets:

- its gold reward (the experiment's ground truth, ``--gold-reward``);
- its learned reward-model score beside it (raw and normalised as PPO sees it), so reward hacking shows
  as RM up while gold goes down;
- its sampled KL to the reference, ``sum_h log pi(y_h|.) - log pi_ref(y_h|.)`` over the policy's own
  response tokens (EOS included), whose mean over samples estimates KL(pi || pi_ref) per sequence;
- its length in tokens and whether it ended with EOS.

Per policy: mean gold with a 95% confidence interval, win rate against the reference (SFT) model judged
by gold, mean KL, mean RM score, length, EOS rate and distinct-1/2.

Confidence intervals are percentile bootstraps (2,000 resamples, fixed seed; rto.stats). The unit is the prompt: a
prompt's value is the mean over its samples and sampling seeds, and prompts are resampled with
replacement. Policies named ``<group>-seed<k>`` (``ppo-seed0``, ``ppo-seed1``) are also summarised as a
group, with a two-level bootstrap that resamples the training seeds and, independently, the prompts, so the
interval carries seed-to-seed variation too (with two or three seeds that part is crude: the per-seed means
are listed beside it). Differences between groups resample the prompts jointly (same prompts for both:
a paired comparison) and each group's seeds independently.

Sampling uses the rollout engine PPO uses (``rto.engines``), with per-sample seeds: sample ``j`` of prompt
``i`` under sampling seed ``s`` draws the same random numbers for every policy. Paired comparisons against
the reference therefore use common random numbers -- a policy identical to the reference ties every
pair (win rate exactly 0.5) -- which lowers the variance of the comparison without biasing it.

Best-of-N (``best_of_n``, default 16) samples N responses per prompt from the reference model with
other seeds and keeps the one with the highest gold reward. It reads the gold function at test time, so
it is an oracle upper reference, not a competing method; its KL to the reference is the analytic bound
``log N - (N - 1) / N`` (Stiennon et al. 2020), not a sampled estimate.

One module on purpose (about 600 lines): sampling, every metric and the bootstrap of one evaluation,
which the demo, the experiments and `rto eval` all share.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rto.config import GenerationOptions, VLLMOptions, check_positive, missing_required, raise_problems
from rto.errors import ConfigError, RtoError
from rto.stats import bootstrap_ci, bootstrap_diff_ci, verdict, win_outcomes, win_rate

# bootstrap_ci, bootstrap_diff_ci, verdict, win_outcomes and win_rate live in rto.stats (shared with the
# demo's report and the experiments); they stay importable from here.

log = logging.getLogger(__name__)

SEED_SUFFIX = re.compile(r"^(?P<group>.+)-seed(?P<seed>\d+)$")


# ----------------------------------------------------------------------------- metric functions


def words(text: str) -> list[str]:
    """Lower-cased whitespace tokens: the unit of distinct-n."""
    return text.lower().split()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Corpus-level distinct-n (Li et al. 2016): distinct word n-grams over all n-grams of all texts.
    0.0 when there is no n-gram at all."""
    total = 0
    seen: set[tuple[str, ...]] = set()
    for t in texts:
        w = words(t)
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n (exact when all samples are distinct)."""
    return math.log(n) - (n - 1) / n


def split_group(name: str) -> tuple[str, int | None]:
    """'ppo-seed1' -> ('ppo', 1); 'sft' -> ('sft', None)."""
    m = SEED_SUFFIX.match(name)
    return (m["group"], int(m["seed"])) if m else (name, None)


# ----------------------------------------------------------------------------- sampling and scoring


@dataclass
class Samples:
    """Responses of one policy. Arrays are (reps, prompts, k): rep = sampling seed, k = sample."""

    texts: list  # nested lists [rep][prompt][k] of response strings
    gold: np.ndarray
    kl: np.ndarray
    rm: np.ndarray  # raw RM scores (nan without a reward model)
    length: np.ndarray  # response tokens, EOS excluded
    ended: np.ndarray
    extra: dict = field(default_factory=dict)


def sample_and_score(
    engine,
    policy,
    ref,
    tokenizer,
    prompt_ids: list[list[int]],
    prompts: list[str],
    gold_fn: Callable,
    *,
    reps: int,
    k: int,
    seed: int,
    batch_size: int,
    rm=None,
    with_kl: bool = True,
    progress=None,
) -> Samples:
    """Sample ``k`` responses per prompt for each of ``reps`` sampling seeds with ``engine`` (sampling
    from ``policy``) and score them (``rm``: an optional `rto.scoring.RewardModel`).

    Sample j of prompt i under rep r uses the per-sample seed (seed + r, iteration 0, index i * k + j),
    whatever the batch, so every policy sees the same random numbers (common random numbers)."""
    from rto.engines import generate_for_prompts, sample_seeds
    from rto.scoring import LogProbModel

    P_n = len(prompt_ids)
    flat = [(r, i, j) for r in range(reps) for i in range(P_n) for j in range(k)]
    shape = (reps, P_n, k)
    gold = np.zeros(shape)
    kl = np.zeros(shape)
    rm_s = np.full(shape, np.nan)
    length = np.zeros(shape)
    ended = np.zeros(shape, dtype=bool)
    texts: list = [[[""] * k for _ in range(P_n)] for _ in range(reps)]
    temperature = engine.settings.temperature
    excluded = engine.settings.excluded_ids  # KL of the distributions sampled from: without the pad token
    policy_lm = LogProbModel(policy, temperature, excluded_ids=excluded)
    ref_lm = LogProbModel(ref, temperature, excluded_ids=excluded)
    policy.eval()
    all_seeds = torch.stack([sample_seeds(seed + r, 0, torch.arange(P_n * k)) for r in range(reps)])
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        seeds = torch.stack([all_seeds[r, i * k + j] for r, i, j in chunk])
        roll = generate_for_prompts(engine, [prompt_ids[i] for _, i, _ in chunk], seeds)
        P = roll.prompt_ids.shape[1]
        mask = roll.response_mask.float()
        full_ids, full_attn = roll.input_ids, roll.attention_mask
        resp_texts = tokenizer.batch_decode(roll.response_ids, skip_special_tokens=True)
        prm = [prompts[i] for _, i, _ in chunk]
        g = gold_fn([prompt_text(p) for p in prm], resp_texts)
        if with_kl and ref is not None and ref is not policy:
            lp, lp_ref = policy_lm.logps(full_ids, full_attn, P), ref_lm.logps(full_ids, full_attn, P)
            kls = ((lp * mask).sum(-1) - (lp_ref * mask).sum(-1)).tolist()
        else:
            kls = [0.0] * len(chunk)
        if rm is not None:
            rms = rm.scores(full_ids, full_attn, prm, roll).tolist()
        else:
            rms = [float("nan")] * len(chunk)
        lens = (roll.response_mask.sum(-1) - roll.ended.long()).tolist()
        for n, (r, i, j) in enumerate(chunk):
            texts[r][i][j] = resp_texts[n]
            gold[r, i, j] = g[n]
            kl[r, i, j] = kls[n]
            rm_s[r, i, j] = rms[n]
            length[r, i, j] = lens[n]
            ended[r, i, j] = bool(roll.ended[n])
        if progress is not None:
            progress.update(len(chunk))
    return Samples(texts, gold, kl, rm_s, length, ended)


def best_of_n(samples: Samples) -> Samples:
    """Keep, per (rep, prompt), the sample with the highest gold reward (first on ties)."""
    idx = samples.gold.argmax(axis=2)[..., None]

    def pick(a):
        return np.take_along_axis(a, idx, axis=2)

    texts = [[[row[int(idx[r, i, 0])]] for i, row in enumerate(rep)] for r, rep in enumerate(samples.texts)]
    n = samples.gold.shape[2]
    return Samples(
        texts,
        pick(samples.gold),
        np.full(pick(samples.kl).shape, best_of_n_kl(n)),
        pick(samples.rm),
        pick(samples.length),
        pick(samples.ended),
        {"n": n, "kl_is_analytic": True},
    )


# ----------------------------------------------------------------------------- summaries


def per_prompt(a: np.ndarray) -> np.ndarray:
    """(reps, prompts, k) -> (prompts,): the mean over sampling seeds and samples."""
    return np.asarray(a, dtype=float).mean(axis=(0, 2))


def summarize(s: Samples, baseline: Samples | None, rm_mean: float, rm_std: float, seed: int = 0) -> dict:
    """The per-policy numbers of eval.json (CIs over prompts)."""
    all_texts = [t for rep in s.texts for row in rep for t in row]
    out: dict[str, Any] = {"n_samples": int(s.gold.size)}
    m, lo, hi = bootstrap_ci(per_prompt(s.gold), seed=seed)
    out.update(gold_mean=m, gold_ci=[lo, hi], gold_std=float(s.gold.std()))
    if baseline is not None:
        wins = _win_matrix(s, baseline)
        m, lo, hi = bootstrap_ci(wins, seed=seed)
        out.update(win_rate=m, win_rate_ci=[lo, hi])
    out["kl_mean"] = float(s.kl.mean())
    if not s.extra.get("kl_is_analytic"):
        _, lo, hi = bootstrap_ci(per_prompt(s.kl), seed=seed)
        out["kl_ci"] = [lo, hi]
    out["kl_is_analytic"] = bool(s.extra.get("kl_is_analytic", False))
    if np.isfinite(s.rm).all():
        out["rm_score_mean"] = float(s.rm.mean())
        out["rm_score_normalized_mean"] = float(((s.rm - rm_mean) / rm_std).mean())
    out.update(
        length_mean=float(s.length.mean()),
        eos_rate=float(s.ended.mean()),
        distinct_1=distinct_n(all_texts, 1),
        distinct_2=distinct_n(all_texts, 2),
    )
    return out


def _win_matrix(s: Samples, baseline: Samples) -> np.ndarray:
    """Per-prompt win fraction of s against baseline: pairs (rep, prompt, j) where both have sample j;
    when s has one sample per prompt (best-of-N) it meets every baseline sample of that prompt."""
    g, b = s.gold, baseline.gold
    reps = min(g.shape[0], b.shape[0])
    g, b = g[:reps], b[:reps]
    if g.shape[2] == 1:
        g = np.broadcast_to(g, b.shape)
    k = min(g.shape[2], b.shape[2])
    return win_outcomes(g[..., :k], b[..., :k]).mean(axis=(0, 2))


def group_summary(members: dict[int, Samples], baseline: Samples | None, seed: int = 0) -> dict[str, Any]:
    """Numbers for policies trained with several seeds: two-level bootstrap over seeds and prompts."""
    seeds = sorted(members)
    gold = np.stack([per_prompt(members[k].gold) for k in seeds])
    m, lo, hi = bootstrap_ci(gold, seed=seed)
    out: dict[str, Any] = {
        "seeds": seeds,
        "gold_mean": m,
        "gold_ci": [lo, hi],
        "gold_per_seed": [float(x) for x in gold.mean(1)],
    }
    if baseline is not None:
        wins = np.stack([_win_matrix(members[k], baseline) for k in seeds])
        m, lo, hi = bootstrap_ci(wins, seed=seed)
        out.update(win_rate=m, win_rate_ci=[lo, hi], win_rate_per_seed=[float(x) for x in wins.mean(1)])
    kl = np.stack([per_prompt(members[k].kl) for k in seeds])
    m, lo, hi = bootstrap_ci(kl, seed=seed)
    out.update(kl_mean=m, kl_ci=[lo, hi], kl_per_seed=[float(x) for x in kl.mean(1)])
    for key, attr in (("length_mean", "length"), ("eos_rate", "ended")):
        out[key] = float(np.mean([getattr(members[k], attr).mean() for k in seeds]))
    return out


def gold_matrix(members: dict[int, Samples]) -> np.ndarray:
    """(seeds, prompts) per-prompt gold means of a group."""
    return np.stack([per_prompt(members[k].gold) for k in sorted(members)])


# ----------------------------------------------------------------------------- the command


@dataclass
class EvalConfig(GenerationOptions, VLLMOptions):
    """Evaluate policies on held-out prompts with a gold reward (see the module docstring of rto.eval)."""

    required: ClassVar[tuple[str, ...]] = ("policies", "prompts", "ref_model", "out")

    policies: list[str] = field(default_factory=list)
    """Policies as name=folder (e.g. sft=runs/demo/sft rto-seed0=runs/demo/rto-seed0); names ending in -seed<k> are also summarised as a group over seeds; a bare folder is named after itself."""
    prompts: str = ""
    """Held-out prompts: a file or dataset in any format rto ppo reads (prompt or messages column; chat templates applied)."""
    ref_model: str = ""
    """Reference (SFT) model: the KL reference, the win-rate baseline and the best-of-N sampler."""
    reward_model: str | None = None
    """Optional learned reward model scored beside the gold reward."""
    gold_reward: str = "vader"
    """Gold reward: 'vader', 'module:function' or 'path/to/file.py:function' taking (prompts, responses)."""
    max_new_tokens: int = 48
    """Longest response in tokens."""
    num_samples_per_prompt: int = 2
    """Responses per prompt per sampling seed."""
    seeds: int = 1
    """Sampling seeds (repeats of the whole sampling)."""
    seed: int = 0
    """First sampling seed; also seeds the bootstrap."""
    best_of_n: int = 16
    """N of the best-of-N oracle sampled from the reference model (0 disables)."""
    max_prompts: int = 0
    """Use only the first this many prompts (0: all)."""
    batch_size: int = 128
    """Sequences per generation batch."""
    max_prompt_length: int = 128
    """Prompts longer than this keep their last tokens."""
    out: str = ""
    """Output folder for eval.json and samples.jsonl."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    progress: bool = True
    """Show a progress bar (only on a terminal)."""

    def validate(self) -> None:
        """Raise a ConfigError listing every problem (missing fields first)."""
        problems = missing_required(self, self.required)
        self.check_generation(problems)
        self.check_vllm(problems)
        for name in ("seeds", "batch_size", "max_prompt_length"):
            if getattr(self, name) < 1:
                problems.append(f"field '{name}' must be >= 1, got {getattr(self, name)}")
        if self.best_of_n < 0 or self.best_of_n == 1:
            problems.append(f"field 'best_of_n' must be 0 (off) or >= 2, got {self.best_of_n}")
        check_positive(self, problems, "max_prompts", "threads", allow_zero=True)
        raise_problems(problems)


def parse_policies(specs: Sequence[str]) -> dict[str, str]:
    """['name=path', 'path'] -> {name: path}; duplicate names are an error."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).name, spec
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise ConfigError(f"--policies: expected name=folder, got {spec!r}")
        if name in out:
            raise ConfigError(f"--policies: the name '{name}' is given twice")
        out[name] = path
    return out


def prompt_text(prompt: str | list[dict]) -> str:
    """What a gold reward function sees of a prompt: a string as it is, a conversation as "role: content"
    lines (independent of any model's chat template)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def load_prompt_texts(source: str, max_prompts: int = 0) -> list[str | list[dict]]:
    """Prompts in every format `rto ppo` reads: a 'prompt' column of strings or of message lists, or a
    'messages' column (the final assistant turn dropped). Sampling renders them as PPO does
    (``encode_prompt``: the tokenizer's chat template for conversations, plain strings as they are)."""
    from rto.data.formats import to_prompt_examples
    from rto.data.loading import load_rows

    prompts = [e["prompt"] for e in to_prompt_examples(load_rows(source), source=source)]
    if max_prompts > 0:
        prompts = prompts[:max_prompts]
    if not prompts:
        raise RtoError(f"{source}: no prompts")
    return prompts


def evaluate(
    policies: dict[str, str],
    prompts: list[str],
    ref_model: str,
    gold_fn: Callable,
    *,
    reward_model: str | None = None,
    samples_per_prompt: int = 2,
    seeds: int = 1,
    seed: int = 0,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    best_of: int = 16,
    batch_size: int = 128,
    max_prompt_length: int = 128,
    progress: bool = True,
    gold_name: str = "gold",
    engine: str = "hf",
    engine_options: dict | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sample, score and summarise every policy; returns (eval.json content, per-sample records).

    The reference model is always evaluated (as 'sft' unless one of ``policies`` is that same folder)
    because it is the win-rate baseline and the best-of-N sampler."""
    from tqdm.auto import tqdm

    from rto import models
    from rto.data.tokenize import tokenize_prompt
    from rto.engines import SamplingSettings, make_engine
    from rto.scoring import RewardModel, load_frozen_lm

    t_start = time.perf_counter()
    tok = models.load_tokenizer(ref_model, padding_side="left")
    ref = load_frozen_lm(ref_model, tok)
    ref_resolved = Path(ref_model).expanduser().resolve()
    base_name = next((n for n, p in policies.items() if Path(p).expanduser().resolve() == ref_resolved), None)
    order = dict(policies)
    if base_name is None:
        base_name = "sft" if "sft" not in order else "reference"
        order = {base_name: ref_model, **order}
    rm = None
    rm_mean, rm_std = 0.0, 1.0
    if reward_model:
        rm = RewardModel.load(reward_model, tok)
        try:
            rm_mean, rm_std = models.score_stats(rm.model, reward_model)
        except RtoError:
            log.warning("%s has no score stats: normalised RM scores equal raw ones", reward_model)
    prompt_ids = [
        tokenize_prompt(tok, {"prompt": p}, max_prompt_length=max_prompt_length)["input_ids"] for p in prompts
    ]
    k, n_p = samples_per_prompt, len(prompts)
    total = len(order) * seeds * n_p * k + (seeds * n_p * best_of if best_of else 0)
    bar = tqdm(
        total=total,
        desc="rto eval: sampling",
        disable=not (progress and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
    settings = SamplingSettings(max_new_tokens, temperature, top_p, tok.eos_token_id, tok.pad_token_id)
    common = dict(
        reps=seeds, seed=seed, batch_size=batch_size, rm=rm, progress=bar
    )  # fmt: skip
    results: dict[str, Samples] = {}
    for name, path in order.items():
        if name == base_name:
            model = ref
        else:
            ptok = models.load_tokenizer(path)
            models.require_same_vocabulary(
                tok, ptok, f"reference model {ref_model}", f"policy '{name}' ({path})"
            )
            model = load_frozen_lm(path, tok)
        sampler = make_engine(engine, model, settings, **(engine_options or {}))
        results[name] = sample_and_score(
            sampler, model, ref, tok, prompt_ids, prompts, gold_fn, k=k, **common
        )
        sampler.close()
    bon = None
    if best_of:
        # Other sampling seeds than the baseline's, so the baseline's own samples are not among the N.
        sampler = make_engine(engine, ref, settings, **(engine_options or {}))
        draws = sample_and_score(
            sampler, ref, ref, tok, prompt_ids, prompts, gold_fn, k=best_of, with_kl=False,
            **{**common, "seed": seed + 100_003},
        )  # fmt: skip
        sampler.close()
        bon = best_of_n(draws)
        bon.extra["sampled_mean_gold"] = float(draws.gold.mean())
    bar.close()

    baseline = results[base_name]
    report: dict[str, Any] = {
        "gold_reward": gold_name,
        "ref_model": str(ref_model),
        "reward_model": reward_model,
        "baseline": base_name,
        "n_prompts": n_p,
        "samples_per_prompt": k,
        "sampling_seeds": seeds,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "ci": "95% percentile bootstrap, 2000 resamples; unit = prompt (two-level: seeds and prompts for groups)",
        "rm_score_stats": {"mean": rm_mean, "std": rm_std},
        "policies": {},
        "groups": {},
        "comparisons": {},
    }
    for name, s in results.items():
        entry = summarize(s, None if name == base_name else baseline, rm_mean, rm_std, seed=seed)
        if name == base_name:
            entry.update(win_rate=0.5, win_rate_ci=[0.5, 0.5])
        entry["path"] = order[name]
        report["policies"][name] = entry
    if bon is not None:
        entry = summarize(bon, baseline, rm_mean, rm_std, seed=seed)
        entry.update(path=ref_model, n=best_of, oracle=True, sampled_mean_gold=bon.extra["sampled_mean_gold"])
        report["policies"][f"best-of-{best_of}"] = entry
    groups: dict[str, dict[int, Samples]] = {}
    for name, s in results.items():
        g, sd = split_group(name)
        if sd is not None:
            groups.setdefault(g, {})[sd] = s
    for g, members in groups.items():
        report["groups"][g] = group_summary(members, baseline, seed=seed)
    units = {g: gold_matrix(m) for g, m in groups.items()}
    for name, s in results.items():
        if split_group(name)[1] is None:
            units.setdefault(name, per_prompt(s.gold)[None, :])
    names = list(units)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = bootstrap_diff_ci(units[a], units[b], seed=seed)
            report["comparisons"][f"{a} - {b}"] = {
                "metric": "gold",
                "diff": d[0],
                "ci": [d[1], d[2]],
                "verdict": verdict(d, a, b),
            }
    report["time_s"] = time.perf_counter() - t_start

    records = []
    for name, s in list(results.items()) + ([(f"best-of-{best_of}", bon)] if bon is not None else []):
        group, train_seed = split_group(name)
        for r in range(s.gold.shape[0]):
            for i in range(n_p):
                for j in range(s.gold.shape[2]):
                    records.append(
                        {
                            "policy": name,
                            "group": group,
                            "train_seed": train_seed,
                            "sampling_seed": seed + r,
                            "prompt_index": i,
                            "sample": j,
                            "prompt": prompts[i],
                            "response": s.texts[r][i][j],
                            "gold": float(s.gold[r, i, j]),
                            "rm_score": None if not np.isfinite(s.rm[r, i, j]) else float(s.rm[r, i, j]),
                            "kl": float(s.kl[r, i, j]),
                            "length": int(s.length[r, i, j]),
                            "ended": bool(s.ended[r, i, j]),
                        }
                    )
    return report, records


def write_eval(folder: str | Path, report: dict, records: list[dict]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    with (folder / "samples.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return folder / "eval.json"


def format_table(report: dict) -> str:
    """A plain-text table of the per-policy numbers (the CLI prints it)."""
    head = f"{'policy':<16} {'gold [95% CI]':<24} {'win vs ' + report['baseline']:<22} {'KL':>7} {'RM(norm)':>9} {'len':>6} {'EOS':>5} {'d-1':>5} {'d-2':>5}"
    lines = [head, "-" * len(head)]
    for name, e in report["policies"].items():
        rm = e.get("rm_score_normalized_mean")
        lines.append(
            f"{name:<16} {e['gold_mean']:+.3f} [{e['gold_ci'][0]:+.3f}, {e['gold_ci'][1]:+.3f}]  "
            f"{e['win_rate']:.3f} [{e['win_rate_ci'][0]:.2f}, {e['win_rate_ci'][1]:.2f}]    "
            f"{e['kl_mean']:7.2f} {'' if rm is None else f'{rm:+.2f}':>9} {e['length_mean']:6.1f} "
            f"{e['eos_rate']:5.2f} {e['distinct_1']:5.2f} {e['distinct_2']:5.2f}"
        )
    return "\n".join(lines)


def run_eval(cfg: EvalConfig) -> Path:
    """`rto eval`: writes <out>/eval.json and <out>/samples.jsonl and prints a table."""
    from rto.tasks.gold import load_gold_reward

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    policies = parse_policies(cfg.policies)
    prompts = load_prompt_texts(cfg.prompts, cfg.max_prompts)
    gold_fn = load_gold_reward(cfg.gold_reward)
    report, records = evaluate(
        policies, prompts, cfg.ref_model, gold_fn, reward_model=cfg.reward_model,
        samples_per_prompt=cfg.num_samples_per_prompt, seeds=cfg.seeds, seed=cfg.seed,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        best_of=cfg.best_of_n, batch_size=cfg.batch_size, max_prompt_length=cfg.max_prompt_length,
        progress=cfg.progress, gold_name=cfg.gold_reward, engine=cfg.engine,
        engine_options=cfg.engine_options(),
    )  # fmt: skip
    path = write_eval(cfg.out, report, records)
    print(format_table(report))
    for key, c in report["comparisons"].items():
        print(f"{key}: {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] -> {c['verdict']}")
    print(f"wrote {path}")
    return path


__all__ = [
    "EvalConfig",
    "run_eval",
    "evaluate",
    "distinct_n",
    "win_rate",
    "win_outcomes",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "verdict",
    "best_of_n_kl",
]
