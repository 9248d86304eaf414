"""The gold reward of the controlled-sentiment task, and loading a user's own gold function.

The gold reward is what the experiment measures; the reward model and the DPO model never see it, only
preference labels sampled from it (``labeling.py``). The default is VADER's compound sentiment of the
response combined with a well-formedness factor ``w`` in [0, 1]:

    gold = w * compound - (1 - w)

so a fluent response (w = 1) scores its sentiment in [-1, 1], and degenerate text slides towards -1
whatever its sentiment. Unlike ``w * compound`` this is increasing in ``w`` for every compound
(d gold / d w = compound + 1 >= 0): a negative review never gains by becoming degenerate, and an empty
response scores -1. The range is exactly [-1, 1].

``w`` is the product of four simple, deterministic factors computed on the response's words
(lower-cased ``[a-z']+`` runs) -- the thresholds sit just outside what the generated corpus contains:

- length: ``n / 4`` below 4 words, ``60 / n`` above 60 words, else 1;
- repetition: the fraction of distinct word trigrams ("great great great great" -> 1/2);
- keyword stuffing: 1 while at most 40% of the words are in VADER's lexicon, falling linearly to 0 at
  80% (a list of sentiment words is not a review; responses under 10 words count as 10 words);
- punctuation: x0.8 if the response does not end with '.', '!' or '?', and x0.8 for each run of repeated
  '!'/'?' (VADER rewards "!!!"; the corpus never uses it).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rto.errors import RtoError

GoldFn = Callable[[list[str], list[str]], list[float]]

MIN_WORDS = 4
MAX_WORDS = 60
STUFFING_START, STUFFING_END = 0.4, 0.8
STUFFING_MIN_WORDS = (
    10  # density of a short response is counted over 10 words, so "was okay." is not stuffing
)
PUNCT_PENALTY = 0.8

_WORD = re.compile(r"[a-z']+")
_PUNCT_RUN = re.compile(r"[!?]{2,}")
_analyzer = None


def _vader():
    """One SentimentIntensityAnalyzer per process, built on first use (it reads its lexicon from disk)."""
    global _analyzer
    if _analyzer is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


def vader_compound(texts: Sequence[str]) -> list[float]:
    """VADER's compound score in [-1, 1] of each text (0 for empty text)."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(t)["compound"]) if t.strip() else 0.0 for t in texts]


def wellformedness(text: str) -> float:
    """The factor ``w`` in [0, 1] described in the module docstring (1 for a fluent corpus review)."""
    words = _WORD.findall(text.lower())
    n = len(words)
    if n == 0:
        return 0.0
    w = min(1.0, n / MIN_WORDS) * min(1.0, MAX_WORDS / n)
    trigrams = list(zip(words, words[1:], words[2:]))
    if trigrams:
        w *= len(set(trigrams)) / len(trigrams)
    lexicon = _vader().lexicon
    density = sum(word in lexicon for word in words) / max(n, STUFFING_MIN_WORDS)
    w *= min(1.0, max(0.0, (STUFFING_END - density) / (STUFFING_END - STUFFING_START)))
    stripped = text.rstrip()
    if not stripped.endswith((".", "!", "?")):
        w *= PUNCT_PENALTY
    w *= PUNCT_PENALTY ** len(_PUNCT_RUN.findall(text))
    return w


def vader_gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The default gold reward: ``w * compound - (1 - w)`` of each response, in [-1, 1]. The prompt is
    not scored (review openings are neutral; a user's prompts might not be)."""
    if len(prompts) != len(responses):
        raise RtoError(f"gold reward: {len(prompts)} prompts but {len(responses)} responses")
    compounds = vader_compound(responses)
    out = []
    for c, r in zip(compounds, responses):
        w = wellformedness(r)
        out.append(w * c - (1.0 - w))
    return out


# --------------------------------------------------------------------------------------------------
# Pluggable gold rewards: "vader", "module:function" or "path/to/file.py:function"


def check_gold_scores(scores, n: int, name: str) -> list[float]:
    """One finite float per response, or an RtoError that names the gold function and the bad entry."""
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise RtoError(f"gold reward '{name}' must return a list of floats, got {type(scores).__name__}")
    if hasattr(scores, "tolist"):  # numpy arrays and torch tensors
        scores = scores.tolist()
    if len(scores) != n:
        raise RtoError(f"gold reward '{name}' returned {len(scores)} scores for {n} responses")
    out = []
    for i, s in enumerate(scores):
        try:
            v = float(s)
        except (TypeError, ValueError):
            raise RtoError(f"gold reward '{name}': score {i} is not a number: {s!r}") from None
        if not math.isfinite(v):
            raise RtoError(f"gold reward '{name}': score {i} is not finite: {v}")
        out.append(v)
    return out


def _import_file(path_str: str, spec: str):
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise RtoError(f"gold reward '{spec}': file not found: {path}")
    mod_name = f"rto_user_gold_{abs(hash(str(path.resolve())))}"
    mod_spec = importlib.util.spec_from_file_location(mod_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise RtoError(f"gold reward '{spec}': cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise RtoError(f"gold reward '{spec}': importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def _import_module(mod_name: str, spec: str):
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise RtoError(
                f"gold reward '{spec}': no module named '{mod_name}' (is it installed or on PYTHONPATH? "
                "a file can be given as path/to/file.py:function)"
            ) from e
        raise RtoError(f"gold reward '{spec}': importing '{mod_name}' failed: {e}") from e
    except Exception as e:
        raise RtoError(f"gold reward '{spec}': importing '{mod_name}' failed: {type(e).__name__}: {e}") from e


VADER_DESCRIPTION = (
    "VADER compound sentiment of the response times a well-formedness factor, in [-1, 1] (rto.tasks.gold)"
)


def describe_gold(spec: str) -> str:
    """One line saying what the gold reward named by ``spec`` is: VADER's, or the user's function with the
    first line of its docstring when it has one."""
    spec = (spec or "").strip()
    if spec.lower() in ("", "vader"):
        return VADER_DESCRIPTION
    try:
        doc = (load_gold_reward(spec).__doc__ or "").strip().splitlines()
    except RtoError:
        doc = []
    return f"the user-supplied function `{spec}`" + (f": {doc[0].strip()}" if doc else "")


def load_gold_reward(spec: str) -> GoldFn:
    """The gold reward named by ``spec``: "vader" (built in), "module:function" (imported only now) or
    "path/to/file.py:function". The function takes (prompts, responses) and returns one float per
    response; the returned wrapper checks that on every call (``check_gold_scores``)."""
    spec = (spec or "").strip()
    if spec.lower() == "vader":
        return vader_gold_reward
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise RtoError(
            f"gold reward '{spec}': expected 'vader', 'module:function' or 'path/to/file.py:function'"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(target, spec)
    else:
        module = _import_module(target, spec)
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise RtoError(f"gold reward '{spec}': '{target}' has no attribute '{attr}'")
        fn = getattr(fn, part)
    if not callable(fn):
        raise RtoError(f"gold reward '{spec}': '{attr}' is a {type(fn).__name__}, not a function")

    def gold(prompts: list[str], responses: list[str]) -> list[float]:
        try:
            scores = fn(list(prompts), list(responses))
        except RtoError:
            raise
        except Exception as e:
            raise RtoError(f"gold reward '{spec}' raised {type(e).__name__}: {e}") from e
        return check_gold_scores(scores, len(responses), spec)

    gold.__name__ = getattr(fn, "__name__", attr)
    gold.__doc__ = getattr(fn, "__doc__", None)
    return gold
