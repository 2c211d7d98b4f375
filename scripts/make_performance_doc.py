"""Write the generated part of ``docs/performance.md`` from ``benchmarks/results/``.

Every ``benchmarks/results/<name>.md`` written by a benchmark becomes one section
of ``docs/performance.md``, between the markers ``<!-- BEGIN GENERATED ... -->``
and ``<!-- END GENERATED -->``, headed by the run's date and machine taken from
the JSON file of the same name (``meta``). The text above the markers is written
by hand and kept. ``tests/test_docs.py`` checks that the page equals what this
script writes, so a new results file without a regenerated page fails the suite.

Usage: ``python scripts/make_performance_doc.py`` (writes the page) or
``python scripts/make_performance_doc.py --check`` (exit 1 when it differs).
"""

from __future__ import annotations

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGE = REPO / "docs" / "performance.md"
BEGIN = "<!-- BEGIN GENERATED from benchmarks/results/ by scripts/make_performance_doc.py: do not edit -->"
END = "<!-- END GENERATED -->"


def _machine(meta: dict) -> str:
    parts = [meta.get("device", "?")]
    if meta.get("device_name"):
        parts.append(str(meta["device_name"]))
    if meta.get("cpu_count"):
        parts.append(f"{meta['cpu_count']} CPUs")
    if meta.get("threads"):
        parts.append(f"{meta['threads']} torch threads")
    if meta.get("torch"):
        parts.append(f"torch {meta['torch']}")
    return ", ".join(parts)


def section(md: pathlib.Path) -> str:
    """One results file as a section: its title, date and machine, its tables."""
    lines = md.read_text().rstrip("\n").splitlines()
    title = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("# ") else md.stem
    body = lines[1:] if lines and lines[0].startswith("# ") else lines
    while body and not body[0].strip():
        body = body[1:]
    meta_file = md.with_suffix(".json")
    meta = json.loads(meta_file.read_text()).get("meta", {}) if meta_file.is_file() else {}
    rel = md.relative_to(REPO).as_posix()
    head = [f"### {title}", ""]
    when = meta.get("when", "date not recorded")
    weights = "random weights" if meta.get("random_weights") else "pretrained weights"
    head.append(
        f"Run of {when} on {_machine(meta) if meta else 'a machine not recorded'}; "
        f"model {meta.get('model', '?')}, {weights}. "
        f"Source: [`{rel}`](../{rel})"
        + (
            f", [`{meta_file.name}`](../{meta_file.relative_to(REPO).as_posix()})"
            if meta_file.is_file()
            else ""
        )
        + "."
    )
    png = md.with_suffix(".png")
    out = head + [""] + [("#" + line if line.startswith("## ") else line) for line in body]
    if png.is_file():
        out += ["", f"![{md.stem}](../{png.relative_to(REPO).as_posix()})"]
    return "\n".join(out).strip("\n")


def generated() -> str:
    files = sorted(RESULTS.glob("*.md"))
    return "\n\n".join([BEGIN, *(section(f) for f in files), END])


def render(page_text: str) -> str:
    """``page_text`` with its generated part replaced (appended when absent)."""
    if BEGIN in page_text:
        head = page_text[: page_text.index(BEGIN)]
        tail = page_text[page_text.index(END) + len(END) :] if END in page_text else "\n"
    else:
        head, tail = page_text.rstrip("\n") + "\n\n", "\n"
    return head + generated() + tail


def main(argv: list[str]) -> int:
    current = PAGE.read_text()
    new = render(current)
    if "--check" in argv:
        if new != current:
            print(
                f"{PAGE.relative_to(REPO)} is out of date: run python scripts/make_performance_doc.py"
            )
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
