"""Where benchmark scripts leave their results: a JSON record in bench/results/ (git-ignored) and a
Markdown section between the script's markers in bench/RESULTS.md (replaced on each run)."""

from __future__ import annotations

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def write(name: str, record: dict, md: str) -> pathlib.Path:
    """Save ``record`` as results/<name>-<record['utc']>.json and put ``md`` between
    ``<!-- <name>.py begin -->`` and ``<!-- <name>.py end -->`` in RESULTS.md (appended if absent)."""
    stamp = record["utc"].replace(":", "").replace("-", "")
    out = HERE / "results" / f"{name}-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    begin, end = f"<!-- {name}.py begin -->", f"<!-- {name}.py end -->"
    res = HERE / "RESULTS.md"
    text = res.read_text() if res.exists() else ""
    block = f"{begin}\n{md}\n{end}"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    res.write_text(text)
    print(f"wrote {out} and {res}")
    return out
