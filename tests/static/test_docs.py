"""The docs stay true and readable: generated tables match the code and live in one page each,
what they list is derived from the code (a list kept by hand would drift), relative links lead
somewhere, and no page outgrows one sitting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from infra import docs
from infra import settings as infra
from shared.contracts import registered

REPO = docs.REPO
PAGES = docs.documents()
MOST_BYTES_A_PAGE = 25_000

FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
# An anchor kept for links from elsewhere after its heading changed: <a id="old-anchor"></a>.
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"(?P<id>[^\"]+)\"\s*>")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}

anchor = docs.anchor


def prose(page: Path) -> str:
    """The page without code blocks, whose `#` lines and brackets are not Markdown."""
    return FENCE.sub("", page.read_text())


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = {m["id"] for m in HTML_ANCHOR.finditer(prose(page))}
    for match in docs.HEADING.finditer(prose(page)):
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


def regions(page: Path) -> list[tuple[str, str]]:
    return [(m["name"], m["body"]) for m in docs.REGION.finditer(page.read_text())]


# --- generated tables -----------------------------------------------------------------------


def test_the_generated_tables_in_docs_match_the_code() -> None:
    stale = [str(path.relative_to(REPO)) for path in docs.stale_files()]
    assert stale == [], "run `make docs` to regenerate them"


@pytest.mark.parametrize("name", docs.TABLES)
def test_each_table_is_written_in_full_in_its_home_page_once(name: str) -> None:
    home = REPO / "docs" / docs.TABLES[name].home
    assert [n for n, _ in regions(home)].count(name) == 1


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_a_region_outside_its_table_s_home_only_links_to_it(page: Path) -> None:
    for name, body in regions(page):
        if name in docs.MOVED or page.name != docs.TABLES[name].home:
            assert body.strip().startswith("Generated in one place: [")
            assert "\n|" not in body


def test_a_region_outside_the_home_renders_a_link_to_the_heading_above_the_table() -> None:
    empty = "<!-- generated: topics -->\n<!-- /generated -->\n"
    assert "](docs/catalog.md#topics)" in docs.regenerate(empty, REPO / "README.md")
    assert "](catalog.md#topics)" in docs.regenerate(empty, REPO / "docs" / "events.md")


def test_a_stale_region_is_noticed_and_rewritten() -> None:
    page = REPO / "docs" / "catalog.md"
    stale = docs.REGION.sub(
        lambda m: f"{m['open']}| hand-edited |\n{m['close']}", page.read_text(), count=1
    )
    assert stale != page.read_text()
    assert docs.regenerate(stale, page) == page.read_text()


def test_a_region_naming_an_unknown_table_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown generated region 'nonsense'"):
        docs.regenerate("<!-- generated: nonsense -->\n<!-- /generated -->\n", PAGES[0])


# --- derived, not kept by hand ----------------------------------------------------------------


def test_the_services_are_the_workspace_s_members_and_the_launcher_s() -> None:
    assert docs.workspace_services() == infra.SERVICES
    assert docs.service_names() == list(infra.SERVICES)


def test_every_event_is_published_by_exactly_one_service() -> None:
    unowned = {
        spec.event_type: docs.producers_of(spec.event_type)
        for spec in registered()
        if len(docs.producers_of(spec.event_type)) != 1
    }
    assert unowned == {}


def test_a_debounced_event_is_published_by_the_service_whose_domain_event_becomes_it() -> None:
    assert docs.producers_of("OrderShippingAddressChanged") == ["order"]
    assert docs.producers_of("StockLevelChanged") == ["inventory"]


def test_the_consumers_are_the_routers_the_services_register() -> None:
    assert docs.consumers_of("ShipmentDispatched") == ["order", "inventory"]
    assert docs.consumers_of("OrderShipped") == []


def defined_metrics() -> set[str]:
    """Every metric name the source defines (``Counter("name", ...)``), read from the files."""
    sources = [*(REPO / "shared" / "src").rglob("*.py"), *(REPO / "services").glob("*/src/**/*.py")]
    found = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name | ast.Attribute)
                and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
                in METRIC_TYPES
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value.removesuffix("_total"))
    return found


def test_every_metric_defined_in_the_code_is_in_the_metrics_table() -> None:
    documented = {family.name for _, metric in docs.metrics() for family in metric.describe()}
    assert defined_metrics() == documented


def test_every_port_of_the_launcher_is_in_the_components_table() -> None:
    rendered = docs.components()
    for variable, default in infra.PORT_VARIABLES.values():
        assert f"{default} `{variable}`" in rendered
    for name in (*infra.SERVICES, *infra.OPTIONAL, "postgres", "jaeger"):
        assert f"| `{name}` |" in rendered


# --- pages that read ------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_page_reads_in_one_sitting(page: Path) -> None:
    assert len(page.read_bytes()) <= MOST_BYTES_A_PAGE


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text('# A heading\n\n<a id="kept"></a>\n')
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-heading) [gone](missing.md) [bad anchor](there.md#nope)\n"
        "[kept](there.md#kept)\n"
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
