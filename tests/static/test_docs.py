"""The docs stay true: generated tables match the code, and relative links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import docs

REPO = docs.REPO
PAGES = [REPO / "README.md", *docs.documents()]

FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose(page: Path) -> str:
    """The page without code blocks, whose `#` lines and brackets are not Markdown."""
    return FENCE.sub("", page.read_text())


def anchor(title: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), title).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(prose(page)):
        slug = anchor(match["title"])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(page))
    return [m["target"] for m in LINK.finditer(text) if not EXTERNAL.match(m["target"])]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no such heading in {destination.name}")
    return broken


def test_the_generated_tables_in_docs_match_the_code() -> None:
    stale = [str(path.relative_to(REPO)) for path in docs.stale_files()]
    assert stale == [], "run `make docs` to regenerate them"


def test_every_table_the_generator_knows_appears_in_docs() -> None:
    used = {m["name"] for page in docs.documents() for m in docs.REGION.finditer(page.read_text())}
    assert used == set(docs.TABLES)


def test_a_stale_region_is_noticed_and_rewritten() -> None:
    page = REPO / "docs" / "events.md"
    stale = docs.REGION.sub(
        lambda m: f"{m['open']}| hand-edited |\n{m['close']}", page.read_text(), count=1
    )
    assert stale != page.read_text()
    assert docs.regenerate(stale) == page.read_text()


def test_a_region_naming_an_unknown_table_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown generated region 'nonsense'"):
        docs.regenerate("<!-- generated: nonsense -->\n<!-- /generated -->\n")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-heading) [gone](missing.md) [bad anchor](there.md#nope)\n"
        "```\n[in code](ignored.md)\n```\n[web](https://example.invalid/x)\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "there.md#nope: no such heading in there.md",
    ]


def test_headings_get_the_anchors_github_gives_them() -> None:
    assert anchor("Dead letters (admin)") == "dead-letters-admin"
    assert anchor("Offsets: commit only what is done") == "offsets-commit-only-what-is-done"
    assert anchor("What `make test` does") == "what-make-test-does"
