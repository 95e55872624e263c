"""Generated README sections: tables between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers are
rewritten from measured results, so no number in the README is typed by hand."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(text: str, name: str, body: str) -> str:
    """Replace the content between the markers of section ``name``; the markers must exist exactly once."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"README: section {name!r}: expected one pair of markers {start} ... {end}")
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text)


def update_readme(readme: Path, name: str, body: str) -> None:
    readme.write_text(replace_section(readme.read_text(), name, body))


def bench_markdown(summary: dict) -> str:
    """A compact table of a suite's headline numbers plus the command that produced them."""
    quick = " --quick" if summary.get("quick") else ""
    rows = [(k, v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.3g} |" for k, v in rows]
    m = summary.get("manifest", {})
    cpu = m.get("cpu_model") or "unknown CPU"
    lines.append("")
    lines.append(f"`zoo bench {summary['suite']}{quick}` on {cpu}, {m.get('cpu_count')} cores, torch "
                 f"{m.get('versions', {}).get('torch')}.")  # fmt: skip
    for key in ("arms_markdown",):
        if key in summary:
            lines += ["", summary[key]]
    return "\n".join(lines)
