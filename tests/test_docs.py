"""docs/results.md stays a short current-state document that the rest of the repo can point into."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results.md"
HISTORY = re.compile(r"session [0-9]|issue [0-9]+", re.IGNORECASE)
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".sh", ""}


def _files(*names: str) -> list[Path]:
    out = []
    for name in names:
        path = REPO / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        out += [p for p in candidates if p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return out


def test_docs_code_and_recipes_do_not_speak_of_project_history():
    hits = []
    for path in _files("docs", "README.md", "recipes", "facedistill", "benchmarks"):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "say what was measured and where, not when:\n" + "\n".join(hits)


def test_results_is_short_and_its_images_exist():
    text = RESULTS.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 500  # one section per claim; superseded tables go (git keeps them)
    images = re.findall(r"\]\((img/[^)\s]+\.png)\)", text)
    assert images, "results.md references no charts: the pattern or the document changed"
    missing = [img for img in images if not (RESULTS.parent / img).is_file()]
    assert not missing, missing


def test_quoted_results_sections_exist():
    headings = [line.lstrip("#").strip().lower() for line in RESULTS.read_text(encoding="utf-8").splitlines()
                if line.startswith("#")]
    quote = re.compile(r'results\.md,\s+"([^"]+)"')
    broken = []
    for path in _files("README.md", "docs", "recipes", "facedistill", "benchmarks", "tests"):
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in quote.findall(text):
            name = " ".join(name.split()).lower()
            if not any(name in heading for heading in headings):
                broken.append(f"{path.relative_to(REPO)}: {name!r}")
    assert not broken, "quoted results.md sections without a heading:\n" + "\n".join(broken)
