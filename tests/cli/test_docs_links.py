"""Every relative Markdown link in README.md, CHANGELOG.md and docs/ leads somewhere: to a file (or folder) of the
repository and, with ``#anchor``, to a heading of that file under GitHub's slug rules. External http(s) and mailto
links are not followed. README.md and docs/ reference nothing outside the repository: no link leaves it, and no
absolute path of the machine they were written on appears in them."""

import glob
import os
import re
import urllib.parse

import pytest

from conftest import REPO

DOCS = [
    "README.md",
    *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True)),
]
LINKED = DOCS + (["CHANGELOG.md"] if os.path.isfile(os.path.join(REPO, "CHANGELOG.md")) else [])

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)


def _lines_outside_code_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line not inside a fenced code block."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its rendered text lower-cased, punctuation removed (letters, digits, `_`, `-`
    and spaces stay), spaces turned into hyphens."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: str) -> set[str]:
    """Every anchor of a Markdown file: its headings' slugs (a repeated slug gets -1, -2, ... as on GitHub) and
    explicit ``<a name=...>`` / ``<a id=...>``."""
    seen: dict[str, int] = {}
    out = set()
    lines = _lines_outside_code_blocks(open(path, encoding="utf-8").read())
    previous = ""
    for _, line in lines:
        match = _ATX.match(line)
        setext = re.fullmatch(r" {0,3}(=+|-+)\s*", line) and previous.strip() and not re.match(r"\s*[|>#*+-]", previous)
        text = match.group(2) if match else previous if setext else None
        if text is not None:
            base = slug(text)
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
        out.update(_HTML_ID.findall(line))
        previous = line
    return out


def links(document: str) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link and image of a document, outside code; a link's text may run
    over several lines."""
    text = open(os.path.join(REPO, document), encoding="utf-8").read()
    lines = [""] * len(text.splitlines())
    for number, line in _lines_outside_code_blocks(text):
        lines[number - 1] = _INLINE_CODE.sub("", line)
    prose = "\n".join(lines)
    out = [(prose.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _LINK.finditer(prose)]
    for number, line in enumerate(lines, 1):
        reference = _REFERENCE.match(line)
        if reference:
            out.append((number, reference.group(1)))
    return sorted(out)


def _is_external(target: str) -> bool:
    return re.match(r"(?i)(https?:|mailto:)", target) is not None


def test_slugs_follow_github():
    assert slug("Parts of speech [T]") == "parts-of-speech-t"
    assert (
        slug("k-extractability of whole sources (`memdyn extract`)")
        == "k-extractability-of-whole-sources-memdyn-extract"
    )
    assert slug("Big models: mixed precision, remat, microbatches, scanned layers") == (
        "big-models-mixed-precision-remat-microbatches-scanned-layers"
    )
    assert slug("Learning rate, masked LMs, unique identifiers (Tirumala et al. 2022)") == (
        "learning-rate-masked-lms-unique-identifiers-tirumala-et-al-2022"
    )
    assert slug("A set at a checkpoint: `memdyn eval --extract`") == "a-set-at-a-checkpoint-memdyn-eval---extract"


def test_the_documents_have_links():
    assert "README.md" in LINKED and "docs/README.md" in LINKED
    assert sum(not _is_external(t) for _, t in links("README.md")) >= 10
    assert sum(not _is_external(t) for _, t in links("docs/README.md")) >= 15


@pytest.mark.parametrize("document", LINKED)
def test_relative_links_lead_to_files_and_headings_of_the_repository(document):
    repo = os.path.realpath(REPO)
    here = os.path.dirname(os.path.join(repo, document))
    dead = []
    for number, target in links(document):
        if _is_external(target) or not target:
            continue
        where = f"{document}:{number}: ({target})"
        path, _, anchor = target.partition("#")
        path = urllib.parse.unquote(path)
        if re.match(r"(?i)[a-z][a-z0-9+.-]*:", path) or path.startswith("/"):
            dead.append(f"{where} is absolute: link within the repository by a relative path")
            continue
        full = os.path.realpath(os.path.join(here, path)) if path else os.path.join(repo, document)
        if os.path.commonpath([repo, full]) != repo:
            dead.append(f"{where} leaves the repository")
        elif not os.path.exists(full):
            dead.append(f"{where}: no such file")
        elif anchor and full.endswith(".md"):
            if urllib.parse.unquote(anchor) not in anchors(full):
                dead.append(f"{where}: no heading with that anchor in {os.path.relpath(full, repo)}")
        elif anchor and not re.fullmatch(r"L\d+(-L\d+)?", anchor):
            dead.append(f"{where}: an anchor into a file that is not Markdown")
    assert not dead, "dead links:\n" + "\n".join(dead)


@pytest.mark.parametrize("document", DOCS)
def test_nothing_outside_the_repository(document):
    """No absolute path of this machine (the checkout's, its parent folder's, the home folder's) and no
    `../shared`-style reference next to the checkout."""
    repo = os.path.realpath(REPO)
    forbidden = {repo, os.path.abspath(REPO), "../shared", "file://"}
    for folder in (os.path.dirname(repo), os.path.expanduser("~")):
        if folder not in ("", "/"):
            forbidden.add(folder.rstrip("/") + "/")
    text = open(os.path.join(REPO, document), encoding="utf-8").read()
    found = [
        f"{document}:{number}: {word}"
        for number, line in enumerate(text.splitlines(), 1)
        for word in sorted(forbidden)
        if word in line
    ]
    assert not found, "references outside the repository:\n" + "\n".join(found)
