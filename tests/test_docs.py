"""The user-facing text refers only to what is in the repository, and the README's commands are the
ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_TEXT = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "src").rglob("*.py"))]


def test_no_references_to_documents_outside_the_repository():
    bad = [re.compile(r"\bSPEC\b"), re.compile(r"\bshared/|\bthe audit\b|\bthe issue\b|\bsession\b", re.I)]
    hits = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in USER_TEXT
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if any(b.search(line) for b in bad)
    ]
    assert not hits, "\n".join(hits)


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    torch_cpu = "pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu"
    command = f'{torch_cpu} && pip install -e ".[test]" && python -m pytest -x -q'
    assert command in readme.splitlines()  # the whole line, as a newcomer copies it
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
    assert f"{torch_cpu} && pip install -e . && rto demo" in readme.splitlines()
