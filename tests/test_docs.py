"""The documentation holds together: every relative link in README.md and docs/*.md resolves
(the file exists; a #fragment names a heading of the target document, by GitHub's anchor rule),
README.md stays short, every docs/ page is linked from it, and no table appears twice."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 250
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
# [text](target "title") and ![alt](target); the text may hold one level of brackets
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, ...


def _name(path: Path) -> str:
    """A path as the messages show it: relative to the repository where it is inside."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def prose_lines(text: str) -> list[str]:
    """The document's lines with fenced code blocks blanked (line numbers kept)."""
    lines, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without markup, lowercased, every character
    that is not a letter, digit, space, hyphen or underscore removed, spaces made hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"(\*\*|__|\*)(.+?)\1", r"\2", text)  # emphasis markers
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    """Every heading's anchor in a document; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(doc.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        out.add(slug)
    return out


def links(doc: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link, image and reference definition outside
    code."""
    found = []
    for number, line in enumerate(prose_lines(doc.read_text(encoding="utf-8")), start=1):
        line = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
        found += [(number, m.group(1)) for m in INLINE_LINK.finditer(line)]
        found += [(number, m.group(1)) for m in REFERENCE_DEF.finditer(line)]
    return found


def broken_links(doc: Path) -> list[str]:
    """One line per relative link of `doc` that does not resolve, saying why."""
    broken = []
    for number, target in links(doc):
        where = f"{_name(doc)}:{number}: ({target})"
        if not target:
            broken.append(f"{where}: empty link target")
            continue
        if SCHEME.match(target) or target.startswith("//"):
            continue  # http(s)://, mailto: and other absolute URLs are not checked here
        path_part, _, fragment = target.partition("#")
        path_part = unquote(path_part)
        if not path_part:
            dest = doc
        elif path_part.startswith("/"):
            dest = ROOT / path_part.lstrip("/")
        else:
            dest = doc.parent / path_part
        if not dest.exists():
            broken.append(f"{where}: {_name(dest)} does not exist")
            continue
        if fragment and dest.is_file() and dest.suffix.lower() == ".md":
            if unquote(fragment).lower() not in anchors(dest):
                broken.append(f"{where}: {_name(dest)} has no heading #{fragment}")
    return broken


def tables(doc: Path) -> list[tuple[int, str]]:
    """(first line number, text) of every table outside code: runs of lines starting with |."""
    out, start, rows = [], 0, []
    for number, line in enumerate([*prose_lines(doc.read_text(encoding="utf-8")), ""], start=1):
        if line.lstrip().startswith("|"):
            if not rows:
                start = number
            rows.append(re.sub(r"\s+", " ", line.strip()))
        elif rows:
            out.append((start, "\n".join(rows)))
            rows = []
    return out


def test_slug_rule():
    assert github_slug("INT8: `digit-export --int8`") == "int8-digit-export---int8"
    assert github_slug("The demo's parity and latency") == "the-demos-parity-and-latency"
    assert github_slug("What ran where") == "what-ran-where"
    assert github_slug("Bulk reading with Ray: `digit-read --ray`") == (
        "bulk-reading-with-ray-digit-read---ray"
    )


def test_the_checker_catches_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## A part\n", encoding="utf-8")
    doc = tmp_path / "b.md"
    doc.write_text(
        "[ok](a.md#a-part) [self](#b) [web](https://example.com) `[code](nope.md)`\n\n"
        "```\n[in a block](nope.md)\n```\n\n# B\n\n"
        "[gone](missing.md) [no anchor](a.md#nowhere)\n",
        encoding="utf-8",
    )
    found = broken_links(doc)
    assert len(found) == 2, found
    assert "missing.md does not exist" in found[0]
    assert "has no heading #nowhere" in found[1]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_name)
def test_relative_links_resolve(doc):
    broken = broken_links(doc)
    assert not broken, f"{_name(doc)} has broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines, more than {README_MAX_LINES}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = set()
    for _, target in links(README):
        path_part = unquote(target.partition("#")[0])
        if path_part and not SCHEME.match(target):
            linked.add((README.parent / path_part).resolve())
    missing = [_name(d) for d in DOCUMENTS[1:] if d.resolve() not in linked]
    assert not missing, f"README.md links none of: {', '.join(missing)}"


def test_no_table_twice():
    first: dict[str, str] = {}
    twice = []
    for doc in DOCUMENTS:
        for number, table in tables(doc):
            where = f"{_name(doc)}:{number}"
            if table in first:
                twice.append(f"{where} repeats the table at {first[table]}")
            else:
                first[table] = where
    assert not twice, "tables that appear twice:\n" + "\n".join(twice)
