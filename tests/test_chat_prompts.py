"""`rto eval` and `rto label` read the prompt formats `rto ppo` reads and render them the same way."""

from __future__ import annotations

import json

import pytest

from rto.cli import main
from rto.data.formats import to_preference_examples
from rto.data.tokenize import render_prompt
from tests.conftest import make_tiny_gpt2
from tests.trainers.helpers import PROMPTS, write_jsonl

GOLD = "def gold(prompts, responses):\n    return [float(len(r)) - 0.5 * len(p) for p, r in zip(prompts, responses)]\n"


@pytest.fixture(scope="module")
def chat_world(tmp_path_factory, tiny_chat_tokenizer):
    root = tmp_path_factory.mktemp("chat")
    make_tiny_gpt2(tiny_chat_tokenizer).save_pretrained(root / "policy")
    tiny_chat_tokenizer.save_pretrained(root / "policy")
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
    write_jsonl(root / "chat.jsonl", [{"prompt": c} for c in conversations])
    write_jsonl(root / "messages.jsonl", [{"messages": [*c, {"role": "assistant", "content": "x"}]} for c in conversations])  # fmt: skip
    rendered = [render_prompt(tiny_chat_tokenizer, c) for c in conversations]
    assert all(r != c[0]["content"] and c[0]["content"] in r for r, c in zip(rendered, conversations))
    write_jsonl(root / "rendered.jsonl", [{"prompt": r} for r in rendered])
    (root / "gold.py").write_text(GOLD)
    return root


def _label(world, prompts: str, out: str) -> list[dict]:
    rc = main(["label", "--prompts", str(world / prompts), "--policy", str(world / "policy"),
               "--gold-reward", f"{world / 'gold.py'}:gold", "--out", str(world / out), "--max-new-tokens", "6",
               "--num-samples-per-prompt", "4", "--seed", "1"])  # fmt: skip
    assert rc == 0
    return [json.loads(line) for line in (world / out).read_text().splitlines()]


def test_label_takes_conversational_prompts_and_applies_the_chat_template(chat_world):
    chat = _label(chat_world, "chat.jsonl", "chat_prefs.jsonl")
    plain = _label(chat_world, "rendered.jsonl", "plain_prefs.jsonl")
    assert chat and len(chat) == len(plain)
    for c, p in zip(chat, plain):  # the same tokens were sampled: the template was applied as PPO applies it
        assert isinstance(c["prompt"], list) and c["chosen"][0]["role"] == "assistant"
        assert {c["chosen"][0]["content"], c["rejected"][0]["content"]} == {p["chosen"], p["rejected"]}
    assert len(to_preference_examples(chat, source="chat_prefs.jsonl")) == len(chat)  # rto rm/dpo read it
    assert _label(chat_world, "messages.jsonl", "messages_prefs.jsonl") == chat


def test_eval_takes_conversational_prompts_and_applies_the_chat_template(chat_world):
    samples = {}
    for name in ("chat", "rendered", "messages"):
        rc = main(["eval", "--policies", f"p={chat_world / 'policy'}", "--prompts", str(chat_world / f"{name}.jsonl"),
                   "--ref-model", str(chat_world / "policy"), "--gold-reward", f"{chat_world / 'gold.py'}:gold",
                   "--best-of-n", "0", "--max-new-tokens", "6", "--out", str(chat_world / f"ev_{name}"),
                   "--no-progress"])  # fmt: skip
        assert rc == 0
        rows = [json.loads(x) for x in (chat_world / f"ev_{name}" / "samples.jsonl").read_text().splitlines()]
        samples[name] = [r["response"] for r in rows]
    assert samples["chat"] == samples["rendered"] == samples["messages"]


def test_label_errors_name_rto_label(chat_world, tmp_path, capsys):
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "hi"}])
    assert main(["label", "--prompts", str(tmp_path / "bad.jsonl"), "--policy", str(chat_world / "policy"),
                 "--out", str(tmp_path / "o.jsonl")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("rto label: error:") and "rto eval" not in err
