"""Small data files and configs for the end-to-end trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

POSITIVE = [
    "the movie was great and the acting was wonderful.",
    "what a lovely film, the music was beautiful.",
    "the story is fine and the ending was great.",
    "a wonderful film with lovely music.",
]
NEGATIVE = [
    "the movie was awful and the acting was terrible.",
    "i hated the plot, it was boring and awful.",
    "the story is boring and the ending was terrible.",
    "a terrible film with boring music.",
]
PROMPTS = ["The movie", "I watched this film and", "The story", "What a", "The acting", "This film"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_rows(n: int = 48) -> list[dict]:
    texts = POSITIVE + NEGATIVE
    return [
        {"prompt": PROMPTS[i % len(PROMPTS)] + " ", "completion": texts[i % len(texts)]} for i in range(n)
    ]


def preference_rows(n: int = 48) -> list[dict]:
    return [
        {
            "prompt": PROMPTS[i % len(PROMPTS)] + " ",
            "chosen": POSITIVE[i % 4],
            "rejected": NEGATIVE[(i + 1) % 4],
        }
        for i in range(n)
    ]


def prompt_rows(n: int = 32) -> list[dict]:
    return [{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(n)]


def read_metrics(folder: Path) -> list[dict]:
    return [
        json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
