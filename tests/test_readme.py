"""The README's Python examples run as written (the "Compose a model" section, in order)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(title: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_compose_section_runs_and_summary_prints_the_table():
    blocks = section_code("Compose a model")
    assert len(blocks) == 2
    first = blocks[0].strip().splitlines()
    assert len([line for line in first if line.strip()]) <= 8, "the issue asks for an 8-line snippet"
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks:
            exec(compile(code, str(README), "exec"), ns)
    printed = out.getvalue()
    ids = eval(printed.splitlines()[0])  # generate_ids' list
    assert len(ids) == 16 and all(0 <= t < 32000 for t in ids)
    assert "MoE 2/8" in printed and "layers.0-3" in printed and "total" in printed
    acts, model = ns["acts"], ns["model"]
    assert acts["layers.1.attn.probs"].shape == (4, 8, 4)
    assert acts["layers.0.moe.experts"].shape == (4, 2)
    assert not (ns["ablated"] == model.logits([1, 15043, 29892, 3186])).all()
