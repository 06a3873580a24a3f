"""The README and docs/ hold together: every relative link points at a file that exists, every results file and every
figure is linked from somewhere, and the README stays short enough to read in five minutes."""
import os
import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}

# [text](target) and ![alt](target), the text possibly over several lines; an optional "title" after the target.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(page: Path) -> list[tuple[str, Path]]:
    """(the link as written, the file it points at) for each relative link of `page`, outside code."""
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    links = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s)://, mailto: and the like; an anchor in the same page
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        links.append((target, (page.parent / path).resolve()))
    return links


def linked_files() -> set[Path]:
    return {path for page in markdown_files() for _, path in relative_links(page)}


def test_every_relative_link_points_at_an_existing_file():
    broken = [f"{page.relative_to(ROOT)}: ({target}) points at {os.path.relpath(path, ROOT)}, which does not exist; "
              f"fix the path (it is relative to {page.parent.relative_to(ROOT)}/) or add the file"
              for page in markdown_files() for target, path in relative_links(page) if not path.exists()]
    assert not broken, "\n".join(broken)


def test_every_results_file_and_figure_is_linked_from_the_readme_or_docs():
    linked = linked_files()
    results = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    figures = sorted(p for p in (ROOT / "docs").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    assert results and figures, "benchmarks/results/*.json or the figures in docs/ are missing: is ROOT right?"
    fixes = {"json": "link it from the docs/results/ page of the measurement that wrote it, saying what it holds, and "
                     "from that measurement's row in docs/results/README.md",
             "figure": "show it (![what it shows](path)) on the README or docs/ page it belongs to, or delete it"}
    orphans = [f"{path.relative_to(ROOT)} is linked from nowhere: {fixes['json' if path in results else 'figure']}"
               for path in results + figures if path.resolve() not in linked]
    assert not orphans, "\n".join(orphans)


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, (f"README.md has {lines} lines, more than {MAX_README_LINES}: move the detail "
                                       f"to a page under docs/ and link it from the README")


def test_the_link_finder_sees_links_images_and_skips_code(tmp_path):
    """The checks above are only as good as the link finder: it must see what a reader can click and nothing else."""
    page = tmp_path / "page.md"
    page.write_text("See [the\nresults](results/a.md#top) and ![a figure](fig.png \"title\").\n"
                    "Not `[code](x.md)`, not <https://example.com>, not [web](https://example.com/y.md), "
                    "not [anchor](#here).\n```\n[in a fence](z.md)\n```\n", encoding="utf-8")
    assert [target for target, _ in relative_links(page)] == ["results/a.md#top", "fig.png"]
    assert relative_links(page)[0][1] == (tmp_path / "results" / "a.md").resolve()
