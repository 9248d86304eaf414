"""The embedded controlled-sentiment world: a generated corpus of short reviews, review openings as
prompts, and the tokenizer and tiny GPT-2 presets trained on them.

Everything is produced by a small grammar from a seed, offline, so the SFT model, the prompts and the
gold reward (VADER, see ``gold.py``) are reproducible on any machine. The grammar is simple on purpose
(a ~1M-parameter GPT-2 learns it in a few hundred steps) and rich in words VADER scores: positive,
negative and neutral adjectives, intensifiers, dampeners, negations, "but" clauses and exclamation marks.
Each review draws an overall polarity (positive, negative or mixed) and each sentence mostly follows it,
so the corpus -- and an LM trained on it -- has sentiment of both signs and a wide spread. A prompt is a
review opening ("The movie", "I bought this phone last week and") that leaves the sentiment open; the
rest of the review is the completion. Prompts carry no trailing space: completions start with one.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from rto.tasks.tokenizer import train_bpe_tokenizer

# --------------------------------------------------------------------------------------------------
# Vocabulary. Words marked by VADER valence in comments where it matters; a few negative-meaning words
# VADER does not score (mediocre, bland, slow) are kept for realism: they read negative but score 0.

POS_ADJ = [
    "great", "wonderful", "amazing", "excellent", "good", "nice", "lovely", "beautiful", "brilliant",
    "perfect", "fantastic", "superb", "pleasant", "delightful", "enjoyable", "impressive", "awesome",
]  # fmt: skip
NEG_ADJ = [
    "bad", "terrible", "awful", "horrible", "poor", "dull", "boring", "disappointing", "weak",
    "stupid", "annoying", "ugly", "disgusting", "nasty", "unpleasant", "dreadful", "lousy", "mediocre",
]  # fmt: skip
MILD_ADJ = ["okay", "fine", "average", "decent", "simple", "solid", "typical", "ordinary"]
INTENSIFIERS = ["very", "really", "extremely", "absolutely", "so", "quite", "incredibly", "totally"]
DAMPENERS = ["kind of", "somewhat", "slightly", "a little"]

DOMAINS: dict[str, dict[str, list[str]]] = {
    "movie": {
        "things": ["movie", "film", "sequel", "show", "documentary", "series", "western"],
        "aspects": ["acting", "plot", "story", "ending", "music", "dialogue", "cast", "soundtrack", "script",
                    "pacing", "camera work", "editing"],
        "pos": ["funny", "clever", "charming", "exciting", "entertaining", "touching", "creative"],
        "neg": ["confusing", "predictable", "lazy", "painful", "messy", "lame", "pointless"],
        "did": ["watched", "saw"],
        "when": ["last night", "yesterday", "with my family", "with coworkers", "at the cinema", "on Friday",
                 "this weekend", "on a plane"],
        "neutral": ["It is about two hours long.", "It is based on a book.", "It came out last year.",
                    "The director also made a film about a family.", "We saw it in a small theater.",
                    "It is the second film in the series.", "My brother picked it."],
        "pos_verdict": ["I would recommend it to everyone.", "I loved every minute of it.",
                        "I will watch it again.", "It made my day.", "A real masterpiece."],
        "neg_verdict": ["It was a waste of time.", "I regret watching it.", "I fell asleep halfway through.",
                        "It was a total disaster.", "I wanted my two hours back."],
    },
    "restaurant": {
        "things": ["restaurant", "place", "cafe", "diner", "pizza place", "bistro", "bakery"],
        "aspects": ["food", "service", "staff", "pasta", "dessert", "coffee", "menu", "atmosphere", "soup",
                    "bread", "waiter", "music"],
        "pos": ["delicious", "friendly", "fresh", "cozy", "welcoming", "tasty", "warm"],
        "neg": ["rude", "cold", "gross", "unfriendly", "stale", "dirty", "slow"],
        "did": ["ate at", "had dinner at", "had lunch at", "went to"],
        "when": ["last night", "yesterday", "with my family", "with coworkers", "on Sunday", "for a birthday",
                 "after work", "on a Monday"],
        "neutral": ["We went on a Tuesday.", "It is next to the train station.", "We ordered the pasta and a salad.",
                    "The menu is on the wall.", "They open at noon.", "We sat by the window.",
                    "It was our first visit."],
        "pos_verdict": ["We will definitely come back.", "I would recommend it to everyone.",
                        "It is my new favorite place.", "Totally worth the price.", "We loved it."],
        "neg_verdict": ["We will not come back.", "It was a waste of money.", "I regret going there.",
                        "Never again.", "The worst meal I have had this year."],
    },
    "product": {
        "things": ["phone", "laptop", "blender", "vacuum", "camera", "coffee maker", "speaker", "watch"],
        "aspects": ["battery", "screen", "design", "price", "sound", "charger", "app", "build quality",
                    "manual", "color", "box", "motor"],
        "pos": ["reliable", "sturdy", "comfortable", "easy to use", "fast", "strong", "clean"],
        "neg": ["flimsy", "broken", "useless", "defective", "frustrating", "uncomfortable", "sluggish"],
        "did": ["bought", "ordered", "got", "tried"],
        "when": ["last week", "a month ago", "for my mother", "on sale", "for work", "for my sister", "online",
                 "last year"],
        "neutral": ["It came in a blue box.", "It arrived on Monday.", "It is smaller than my old one.",
                    "I use it every morning.", "It comes with a cable.", "It is made in two colors.",
                    "The box was small."],
        "pos_verdict": ["I would recommend it to everyone.", "Totally worth the money.", "I love it.",
                        "Best purchase this year.", "I would buy it again."],
        "neg_verdict": ["It was a waste of money.", "I returned it after a week.", "I regret buying it.",
                        "Do not buy it.", "It stopped working after two days."],
    },
}  # fmt: skip

_DOMAIN_NAMES = sorted(DOMAINS)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------------------------------
# Openings (= prompts): (text, kind, domain, speaker, thing), where kind says how the continuation starts:
# "np" -> a verb phrase ("was great."), "and" -> a clause after "and" ("I loved it.") by the speaker.


def _opening(rng: random.Random) -> tuple[str, str, str, str, str]:
    dom_name = rng.choice(_DOMAIN_NAMES)
    dom = DOMAINS[dom_name]
    thing = rng.choice(dom["things"])
    form = rng.random()
    if form < 0.35:
        return f"{rng.choice(['The', 'This'])} {thing}", "np", dom_name, "", thing
    if form < 0.55:
        aspect = rng.choice(dom["aspects"])
        prep = "in" if dom_name == "movie" else ("at" if dom_name == "restaurant" else "of")
        return f"The {aspect} {prep} this {thing}", "np", dom_name, "", thing
    speaker = rng.choice(["I", "We"])
    did = rng.choice(dom["did"])
    when = rng.choice(dom["when"] + [""])
    text = f"{speaker} {did} this {thing}" + (f" {when}" if when else "") + " and"
    return text, "and", dom_name, speaker, thing


# --------------------------------------------------------------------------------------------------
# Sentiment-bearing pieces. `pol` is +1, -1 or 0 (mild / neutral).


def _adj(rng: random.Random, dom: dict, pol: int) -> str:
    """An adjective phrase of the given polarity: plain, intensified, dampened or negated."""
    if pol == 0:
        word = rng.choice(MILD_ADJ)
        return f"{rng.choice(DAMPENERS)} {word}" if rng.random() < 0.2 else word
    same = (POS_ADJ + dom["pos"]) if pol > 0 else (NEG_ADJ + dom["neg"])
    other = (NEG_ADJ + dom["neg"]) if pol > 0 else (POS_ADJ + dom["pos"])
    r = rng.random()
    if r < 0.12:  # negation of the opposite word: "not bad" (VADER: positive), "not very good" (negative)
        mid = f"{rng.choice(['very', 'that', 'really'])} " if rng.random() < 0.3 else ""
        return f"not {mid}{rng.choice(other)}"
    if r < 0.45:
        return f"{rng.choice(INTENSIFIERS)} {rng.choice(same)}"
    if r < 0.52:
        return f"{rng.choice(DAMPENERS)} {rng.choice(same)}"
    return rng.choice(same)


def _attributive(phrase: str) -> str:
    """'a so nice place' is not English; 'a very nice place' is."""
    return "very " + phrase[3:] if phrase.startswith("so ") else phrase


def _end(rng: random.Random, pol: int) -> str:
    return "!" if pol != 0 and rng.random() < 0.25 else "."


def _predicate(rng: random.Random, dom: dict, pol: int, verb: str) -> str:
    """'was great and funny', 'is a wonderful film', 'was good but a little slow'."""
    r = rng.random()
    if r < 0.45:
        return f"{verb} {_adj(rng, dom, pol)}"
    if r < 0.65:
        return f"{verb} {_adj(rng, dom, pol)} and {_adj(rng, dom, pol)}"
    if r < 0.8:
        # a 'but' turn: VADER weighs the clause after 'but' more, so the second half sets the tone
        return f"{verb} {_adj(rng, dom, -pol if pol else rng.choice([-1, 1]))} but {_adj(rng, dom, pol)}"
    phrase = _attributive(_adj(rng, dom, pol))
    if phrase.startswith(("not ", "kind of", "somewhat", "slightly", "a little")):
        return f"{verb} {phrase}"
    noun = rng.choice(["experience", "choice", "surprise", "one", "time"])
    return f"{verb} {_article(phrase)} {phrase} {noun}"


def _clause_after_and(rng: random.Random, dom: dict, pol: int, speaker: str) -> str:
    """A first sentence continuing 'I watched this film and ...'."""
    subj, were = ("I", "was") if speaker == "I" else ("we", "were")
    r = rng.random()
    if r < 0.4:
        return f"it {_predicate(rng, dom, pol, rng.choice(['was', 'is']))}"
    if r < 0.7:
        if pol > 0:
            verb = rng.choice(["loved", "enjoyed", "liked", "really liked", "absolutely loved"])
        elif pol < 0:
            verb = rng.choice(["hated", "did not like", "did not enjoy", "really hated", "regretted"])
        else:
            verb = rng.choice(["did not mind", "kind of liked", "have mixed feelings about"])
        return f"{subj} {verb} it"
    if pol > 0:
        feel = rng.choice(["happy", "impressed", "excited", "very happy", "really impressed"])
    elif pol < 0:
        feel = rng.choice(["disappointed", "bored", "annoyed", "very disappointed", "really bored"])
    else:
        feel = rng.choice(["surprised", "not sure", "a little confused"])
    return f"{subj} {were} {feel}"


def _aspect_sentence(rng: random.Random, dom: dict, pol: int) -> str:
    a, b = rng.sample(dom["aspects"], 2)
    verb = rng.choice(["was", "is"])
    r = rng.random()
    if r < 0.55:
        return f"The {a} {_predicate(rng, dom, pol, verb)}{_end(rng, pol)}"
    if r < 0.8:
        p1 = -pol if pol else rng.choice([-1, 1])
        return f"The {a} {verb} {_adj(rng, dom, p1)} but the {b} {verb} {_adj(rng, dom, pol)}{_end(rng, pol)}"
    return f"The {a} and the {b} were {_adj(rng, dom, pol)}{_end(rng, pol)}"


def _extra_sentence(rng: random.Random, dom: dict, pol: int, thing: str) -> str:
    r = rng.random()
    if pol == 0 and r < 0.5:
        return rng.choice(dom["neutral"])
    if r < 0.6:
        return _aspect_sentence(rng, dom, pol)
    if r < 0.85 and pol != 0:
        return rng.choice(dom["pos_verdict"] if pol > 0 else dom["neg_verdict"])
    if pol == 0:
        return f"Overall, it was {_adj(rng, dom, 0)}."
    phrase = _attributive(_adj(rng, dom, pol))
    if phrase.startswith(("not ", "kind of", "somewhat", "slightly", "a little")):
        return f"Overall, it was {phrase}{_end(rng, pol)}"
    return f"Overall, {_article(phrase)} {phrase} {thing}{_end(rng, pol)}"


def _sentence_polarity(rng: random.Random, overall: int) -> int:
    """Sentences mostly follow the review's polarity; some drift, so reviews are not all extreme."""
    if overall == 0:
        return rng.choice([-1, 0, 1])
    r = rng.random()
    return overall if r < 0.75 else (0 if r < 0.9 else -overall)


def _review(rng: random.Random) -> tuple[str, str]:
    opening, kind, domain, speaker, thing = _opening(rng)
    dom = DOMAINS[domain]
    overall = rng.choices([1, -1, 0], weights=[0.38, 0.46, 0.16])[0]
    pol = overall if overall != 0 else rng.choice([-1, 0, 1])
    if kind == "np":
        first = f"{_predicate(rng, dom, pol, rng.choice(['was', 'is']))}{_end(rng, pol)}"
    else:
        first = f"{_clause_after_and(rng, dom, pol, speaker)}{_end(rng, pol)}"
    sentences = [first]
    for _ in range(rng.choices([1, 2], weights=[0.45, 0.55])[0]):
        for _attempt in range(10):  # no sentence twice in one review
            sentence = _extra_sentence(rng, dom, _sentence_polarity(rng, overall), thing)
            if sentence not in sentences:
                break
        sentences.append(sentence)
    return opening, " " + " ".join(sentences)


def generate_examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` reviews split as {"prompt": opening, "completion": rest} (prompt + completion = review).
    The SFT stage trains on these; deterministic given ``seed``."""
    rng = random.Random(f"rto-reviews-{seed}")
    return [dict(zip(("prompt", "completion"), _review(rng))) for _ in range(n)]


def generate_reviews(n: int, seed: int = 0) -> list[str]:
    """``n`` review texts (2-3 short sentences, mostly 10-30 words); deterministic given ``seed``."""
    return [ex["prompt"] + ex["completion"] for ex in generate_examples(n, seed)]


def generate_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` review openings from the same distribution the corpus uses (a few hundred distinct
    ones exist, so different seeds give different samples of that space but overlapping strings).
    Use one seed for training prompts and another for held-out evaluation prompts."""
    rng = random.Random(f"rto-prompts-{seed}")
    return [_opening(rng)[0] for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# Tokenizer and model presets


def build_sentiment_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE trained on the corpus (with BOS/EOS/PAD): a small vocabulary keeps the tiny model
    fast; with the default 2048 almost every word of the grammar is one token."""
    return train_bpe_tokenizer(texts, vocab_size=vocab_size)


# (n_embd, n_layer, n_head); parameter counts in tiny_gpt2_config's docstring.
GPT2_PRESETS: dict[str, tuple[int, int, int]] = {
    "micro": (64, 2, 2),
    "tiny": (128, 4, 4),
    "small": (256, 4, 4),
    "medium": (384, 8, 6),
}


def tiny_gpt2_config(tokenizer, size: str = "tiny", n_positions: int = 128):
    """A GPT-2 config for the sentiment world.

    Presets (n_embd, n_layer, n_head) and parameter counts measured at n_positions 128 (GPT-2 ties the
    input and output embeddings), first with the sentiment tokenizer (its BPE saturates at ~1,110 tokens
    on this corpus even when asked for 2048), then with a full 2048-token vocabulary:

    - "micro"  (64, 2, 2):   0.18M / 0.24M
    - "tiny"   (128, 4, 4):  0.95M / 1.07M
    - "small"  (256, 4, 4):  3.48M / 3.72M
    - "medium" (384, 8, 6): 14.67M / 15.03M

    Dropout stays at GPT-2's defaults (RL trainers switch it off themselves); the vocabulary size and
    BOS/EOS/PAD ids come from ``tokenizer``.
    """
    from transformers import GPT2Config

    from rto.errors import ConfigError

    if size not in GPT2_PRESETS:
        raise ConfigError(f"model size '{size}' is not one of {', '.join(GPT2_PRESETS)}")
    n_embd, n_layer, n_head = GPT2_PRESETS[size]
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
