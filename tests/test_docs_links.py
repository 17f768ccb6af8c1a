"""Relative links in the repository's markdown point to files (and headings) that exist, inside the repository.

    python -m pytest -q tests/test_docs_links.py

Checked: README.md, BENCHMARKS.md, docs/**/*.md, models/README.md and kernels/**/*.md. A link is ``[text](target)`` or
``![alt](target)`` outside fenced code blocks; web links (``http:``, ``https:``, ``mailto:``) are
not followed. ``target#anchor`` into a markdown file must name one of its headings (GitHub's slugs).
Outside the dated logs (docs/log), a repository file named in a code span (`bash scripts/gpu/x.sh`)
must exist.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
WEB = ("http://", "https://", "mailto:")


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md")),
             ROOT / "models" / "README.md", *sorted((ROOT / "kernels").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, spaces and
    hyphens kept), spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose(path.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of ``path`` that leaves ``root`` or points to a missing file or heading."""
    problems = []
    for number, line in _prose(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if target.startswith(WEB):
                continue
            where = f"{path.relative_to(root)}:{number}: {target}"
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if root.resolve() not in (dest, *dest.parents):
                problems.append(f"{where} (outside the repository)")
            elif not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading #{anchor} in {dest.relative_to(root.resolve())})")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    assert broken_links(path) == []


def test_checker_catches_broken_links(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Some `code` section\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/page.md) [ok anchor](docs/page.md#some-code-section) ![img](docs/page.md)\n"
        "[gone](docs/missing.md) [bad anchor](docs/page.md#nothing) [out](../shared/DESIGN.md)\n"
        "[web](https://example.com/x.md) [self](#a-heading-here)\n"
        "```\n[in code](not/checked.md)\n```\n"
    )
    problems = broken_links(readme, root=tmp_path)
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == [
        "docs/missing.md", "docs/page.md#nothing", "../shared/DESIGN.md", "#a-heading-here"]


# a repository file named in code spans (`bash scripts/gpu/x.sh 8`, `configs/train/y.yaml`): outside the
# dated logs (history may name what was removed since) it must exist
SPAN = re.compile(r"`([^`]+)`")
REPO_PATH = re.compile(r"^(?:\./)?((?:scripts|configs|kernels|pipelines|vidhash|tests|models|docs)/[\w./-]*\.\w+)")
NAMED_ABSENT = {("kernels/README.md", "kernels/__init__.py"),  # a heading: why there is none
                ("kernels/memory/NOTES.md", "scripts/memory_candidates.py")}  # "in git history at commit ..."


def missing_paths(path: Path, root: Path = ROOT) -> list[str]:
    """Repository files named in ``path``'s code spans (a span may wrap over lines of a paragraph)
    that do not exist; fenced blocks are not read."""
    out = []
    for block in _paragraphs(_prose(path.read_text(encoding="utf-8"))):
        text = "\n".join(line for _, line in block)
        for m in SPAN.finditer(text):
            number = block[text.count("\n", 0, m.start())][0]
            for token in m.group(1).split():
                p = REPO_PATH.match(token.split("::")[0].rstrip(",.:;)"))
                if p and not (root / p.group(1)).exists() and (str(path.relative_to(root)), p.group(1)) not in NAMED_ABSENT:
                    out.append(f"{path.relative_to(root)}:{number}: {p.group(1)}")
    return out


def _paragraphs(lines: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Runs of consecutive non-blank prose lines (a code span does not cross a blank line)."""
    out, cur, last = [], [], None
    for number, line in lines:
        if not line.strip() or (last is not None and number != last + 1):
            if cur:
                out.append(cur)
            cur = []
        if line.strip():
            cur.append((number, line))
        last = number
    if cur:
        out.append(cur)
    return out


@pytest.mark.parametrize("path", [p for p in doc_files() if "log" not in p.relative_to(ROOT).parts],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_files_named_in_code_spans_exist(path: Path):
    assert missing_paths(path) == []


def test_path_checker_catches_a_removed_script(tmp_path: Path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "there.sh").write_text("")
    doc = tmp_path / "README.md"
    doc.write_text("run `bash scripts/there.sh 8` or `bash scripts/gone.sh`; `tests/x.py::test_a`\n```\n`scripts/fenced.sh`\n```\n"
                   "a span `that wraps\nscripts/wrapped.sh` over lines\n\nand `one` then ` scripts/there.sh `\n")
    assert [p.split(": ", 1)[1] for p in missing_paths(doc, root=tmp_path)] == [
        "scripts/gone.sh", "tests/x.py", "scripts/wrapped.sh"]
    assert missing_paths(doc, root=tmp_path)[-1].startswith("README.md:5:")
