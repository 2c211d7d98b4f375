"""Code blocks of README.md and docs/*.md, and the convention that says which
test runs each one (see docs/development.md, "Docs that cannot rot silently").

A fenced ``python``, ``bash`` or ``sh`` block may be preceded (on the line
before its fence) by one marker:

- ``<!-- doc-test: NAME -->``: a test runs it; it gets the text with
  :func:`block` ``("NAME")``;
- ``<!-- doc-test: skip (REASON) -->``: not run, for the reason given.

Unmarked ``bash`` blocks have every ``fiftyone-lazsl ...`` line parsed by the
real command-line parser; unmarked ``python`` blocks are not allowed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKED_LANGS = ("python", "bash", "sh")
_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")


@dataclasses.dataclass
class Block:
    """One fenced code block: its file (relative to the repository), the line of
    its opening fence (1-based), language, marker (None, ``"skip"`` or a name),
    skip reason, and text."""

    path: str
    line: int
    lang: str
    marker: str | None
    reason: str | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files() -> list[pathlib.Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(files: list[pathlib.Path] | None = None) -> list[Block]:
    """Every fenced code block of ``files`` (default :func:`doc_files`)."""
    out = []
    for f in files or doc_files():
        lines = f.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = _FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            lang, start = m.group(1).lower(), i
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            marker = reason = None
            if start > 0 and (mm := _MARKER.match(lines[start - 1])):
                spec = mm.group(1)
                sk = re.fullmatch(r"skip\s*\((.+)\)", spec)
                if sk:
                    marker, reason = "skip", sk.group(1).strip()
                elif spec.startswith("skip"):
                    marker, reason = "skip", ""  # a skip without a reason: flagged by the test
                else:
                    marker = spec
            out.append(
                Block(
                    str(f.relative_to(ROOT)),
                    start + 1,
                    lang,
                    marker,
                    reason,
                    "\n".join(lines[start + 1 : j]) + "\n",
                )
            )
            i = j + 1
    return out


def block(name: str) -> str:
    """The text of the one block marked ``<!-- doc-test: NAME -->``.

    Raises:
        LookupError: no block, or more than one, has that name.
    """
    found = [b for b in blocks() if b.marker == name]
    if len(found) != 1:
        raise LookupError(
            f"{len(found)} doc blocks are marked 'doc-test: {name}': "
            + ", ".join(b.where for b in found)
        )
    return found[0].text


def cli_lines(text: str) -> list[str]:
    """``fiftyone-lazsl ...`` command lines of a shell block (continuation lines
    joined, comments dropped)."""
    cmds = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("fiftyone-lazsl "):
            cmds.append(line)
    return cmds
