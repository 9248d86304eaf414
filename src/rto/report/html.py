"""The token-reward picture as a self-contained HTML page: each response token on a background coloured
by its DPO token reward, the exact value in the tooltip."""

from __future__ import annotations

import html
from pathlib import Path


def reward_color(r: float, vmax: float) -> str:
    """Diverging colour: red for negative, white at 0, blue for positive; alpha grows with |r| / vmax."""
    a = min(abs(r) / vmax, 1.0) if vmax > 0 else 0.0
    rgb = (178, 24, 43) if r < 0 else (33, 102, 172)
    return f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {0.85 * a:.3f})"


def token_rewards_html(examples: list[dict], title: str, note: str = "") -> str:
    """One block per example ({prompt, tokens, rewards, label, gold}); values in tooltips."""
    vmax = max((abs(r) for e in examples for r in e["rewards"]), default=1.0) or 1.0
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.5}"
        ".ex{margin:1.2em 0;padding:.6em;border:1px solid #ddd;border-radius:4px}"
        ".meta{color:#555;font-size:.9em}.prompt{color:#777}"
        ".tok{font-family:monospace;white-space:pre;border-radius:2px;padding:1px 0}</style></head><body>",
        f"<h2>{html.escape(title)}</h2>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    parts.append(
        "<p>Scale: "
        + " ".join(
            f"<span class='tok' style='background:{reward_color(v, vmax)}'> {v:+.2f} </span>"
            for v in (-vmax, -vmax / 2, 0.0, vmax / 2, vmax)
        )
        + "</p>"
    )
    for e in examples:
        toks = "".join(
            f"<span class='tok' title='{r:+.4f}' style='background:{reward_color(r, vmax)}'>"
            f"{html.escape(t) if t.strip() or t == ' ' else html.escape(repr(t))}</span>"
            for t, r in zip(e["tokens"], e["rewards"])
        )
        parts.append(
            f"<div class='ex'><div class='meta'>{html.escape(e['label'])} &middot; gold {e['gold']:+.3f} "
            f"&middot; DPO reward sum {sum(e['rewards']):+.3f}</div>"
            f"<span class='prompt'>{html.escape(e['prompt'])}</span>{toks}</div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_token_rewards_html(examples: list[dict], path: Path, title: str, note: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token_rewards_html(examples, title, note), encoding="utf-8")
    return path
