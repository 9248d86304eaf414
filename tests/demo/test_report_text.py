"""Small pieces of the demo report's text: numbers, warnings, the gold description, the plots' labels."""

from __future__ import annotations

from rto.report import learned_reward_warnings
from rto.report.tables import ci_text, fmt
from rto.tasks.gold import describe_gold


def test_no_negative_zero():
    assert fmt(-0.0004, "+.3f") == "+0.000" and fmt(-0.0004, ".2f") == "0.00"
    assert fmt(-0.0006, "+.3f") == "-0.001" and fmt(0.25, ".1%") == "25.0%"
    assert ci_text([-0.00001, 0.049]) == "[+0.000, +0.049]"


def test_learned_rewards_below_chance_are_warned_about():
    stats = {"pairs": 16, "rm_accuracy_vs_gold": 0.375, "dpo_accuracy_vs_gold": 0.75}
    (w,) = learned_reward_warnings(stats)
    assert "reward model ranks the higher-gold response first in only 38% of 16 held-out pairs" in w
    assert learned_reward_warnings({**stats, "rm_accuracy_vs_gold": 0.5}) == []
    assert learned_reward_warnings({"pairs": 0}) == []


def test_gold_description_is_the_gold_that_was_used(tmp_path):
    assert "VADER" in describe_gold("vader")
    f = tmp_path / "g.py"
    f.write_text(
        'def score(prompts, responses):\n    """Length of the response in words."""\n    return [0.0] * len(responses)\n'
    )
    d = describe_gold(f"{f}:score")
    assert (
        d == f"the user-supplied function `{f}:score`: Length of the response in words." and "VADER" not in d
    )


def test_plots_label_seeds_references_and_the_length_cap(tmp_path, monkeypatch):
    from rto.report import plots

    labels = []
    real_save = plots._save

    def keep_labels(fig, path):
        labels.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_labels)
    curves = {"ppo": {"iterations": [1, 2], "gold_per_seed": [[0.1, 0.2]], "rm_per_seed": [[0, 1]], "kl_per_seed": [[0, 1]]}}  # fmt: skip
    plots.curves_vs_iteration(curves, {"sft": -0.3, "dpo": -0.3}, tmp_path / "c.png")
    assert "PPO (1 seed)" in labels and "sft (eval, -0.300)" in labels and "dpo (eval, -0.300)" in labels
    plots.length_distributions({"sft": [3, 20, 20]}, tmp_path / "l.png", cap=20)
    assert "length cap (max_new_tokens = 20)" in labels
