"""The documentation cannot rot silently (docs/development.md, "Docs that
cannot rot silently"): every module is named in docs/architecture.md, every
relative link and file path of README.md and docs/ resolves, the performance
page is generated from benchmarks/results/, every code block is run by a test
or skipped with a reason, and the README stays a front page."""

import pathlib
import re
import subprocess
import sys

import pytest

from doc_blocks import CHECKED_LANGS, ROOT, blocks, doc_files

PACKAGE = ROOT / "fiftyone_lazsl"
FILE_EXTENSIONS = {
    "py",
    "md",
    "json",
    "txt",
    "png",
    "jpg",
    "sh",
    "toml",
    "yml",
    "yaml",
    "csv",
    "npz",
    "cfg",
    "ini",
    "html",
}
_PLACEHOLDER = re.compile(r"[<>*$~{}|]")


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_is_named_in_architecture():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for p in _modules():
        rel = p.relative_to(PACKAGE).as_posix()
        dotted = "fiftyone_lazsl." + rel[:-3].replace("/", ".")
        forms = [f"`{rel}`", f"fiftyone_lazsl/{rel}", f"`{dotted}`"]
        if not any(f in text for f in forms):
            missing.append(rel)
    assert len(_modules()) > 40  # the scan found the package
    assert not missing, f"docs/architecture.md does not name: {missing}"


def _anchors(md: pathlib.Path) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings."""
    out, fence = set(), False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m and not fence:
            h = re.sub(r"[^\w\- ]", "", m.group(1).lower().replace("`", ""))
            out.add(h.replace(" ", "-"))
    return out


def _strip_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _link_problems(md: pathlib.Path) -> list[str]:
    text = _strip_code_blocks(md.read_text())
    problems = []
    prose = re.sub(r"`[^`]*`", "", text)  # links are not read inside inline code
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            problems.append(f"{md.relative_to(ROOT)}: link {target} -> no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{md.relative_to(ROOT)}: link {target} -> no heading #{anchor}")
    for token in re.findall(r"`([^`\s]+)`", text):
        path, _, test_name = token.partition("::")
        if (
            "/" not in path
            or _PLACEHOLDER.search(path)
            or path.startswith(("/", "../shared"))
            or re.match(r"^[a-z]+:", path)
        ):
            continue
        ext = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
        if not (path.endswith("/") or ext in FILE_EXTENSIONS):
            continue
        bases = [ROOT, PACKAGE, md.parent]
        found = next((b / path for b in bases if (b / path).exists()), None)
        if found is None:
            problems.append(f"{md.relative_to(ROOT)}: path `{token}` does not exist")
        elif test_name and not re.search(
            rf"^def {re.escape(test_name)}\(", found.read_text(), re.M
        ):
            problems.append(f"{md.relative_to(ROOT)}: `{token}`: no such test")
    return problems


def test_every_relative_link_and_path_resolves():
    files = doc_files()
    assert len(files) >= 10
    problems = [p for f in files for p in _link_problems(f)]
    assert not problems, "\n".join(problems)


def test_the_link_checker_finds_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[a](missing.md) [b](#nowhere) `fo/nothing.py` "
        "`tests/test_docs.py::test_no_such_test` `fo/writer.py` [c](#x)\n\n## X\n"
    )
    problems = _link_problems_at(page)
    assert len(problems) == 4, problems


def _link_problems_at(page: pathlib.Path) -> list[str]:
    # _link_problems reports paths relative to the repository: give it a page there
    target = ROOT / "docs" / f".link-check-{page.name}"
    target.write_text(page.read_text())
    try:
        return _link_problems(target)
    finally:
        target.unlink()


def test_performance_page_is_generated_from_the_results_files():
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_performance_doc.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = (ROOT / "docs" / "performance.md").read_text()
    for md in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert f"benchmarks/results/{md.name}" in text
        # every table row of the results file is on the page, verbatim
        rows = [l for l in md.read_text().splitlines() if l.startswith("|")]
        assert rows and all(row in text for row in rows), md.name


def _requested_names() -> set[str]:
    names = set()
    for t in (ROOT / "tests").glob("*.py"):
        names |= set(re.findall(r"\bblock\(\s*\"([^\"]+)\"\s*\)", t.read_text()))
    return names


def test_every_code_block_is_run_by_a_test_or_skipped_with_a_reason():
    found = [b for b in blocks() if b.lang in CHECKED_LANGS]
    assert len(found) >= 10
    requested = _requested_names()
    problems = []
    named: dict[str, list[str]] = {}
    for b in found:
        if b.marker == "skip":
            if not b.reason:
                problems.append(f"{b.where}: 'doc-test: skip' needs a reason in parentheses")
        elif b.marker is not None:
            named.setdefault(b.marker, []).append(b.where)
            if b.marker not in requested:
                problems.append(f"{b.where}: no test under tests/ asks for block({b.marker!r})")
        elif b.lang == "python":
            problems.append(
                f"{b.where}: a python block needs a doc-test marker "
                "(a test that runs it, or skip with a reason)"
            )
    problems += [
        f"block name {n!r} used {len(w)} times: {w}" for n, w in named.items() if len(w) > 1
    ]
    problems += [
        f"tests ask for block({n!r}) but no doc block has that name" for n in requested - set(named)
    ]
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    for page in ("docs/index.md", "docs/app_screenshot.png"):
        assert any(page in l for l in lines), page


@pytest.mark.parametrize("path", [p.relative_to(ROOT).as_posix() for p in doc_files()])
def test_no_pointers_outside_the_repository(path):
    text = (ROOT / path).read_text()
    bad = re.findall(
        r"(?i)\bissues? ?#?\d+\b|notes-\d+\.md|\bin the run before\b|"
        r"\ban hour earlier\b",
        text,
    )
    assert not bad, bad
