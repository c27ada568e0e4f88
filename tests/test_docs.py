"""The documents as a newcomer reads them: a short README, links that resolve, no file outside the repository
cited, and every complete command of a code block parsing to what its text says (erratum-comparable memory)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from continual.config import parse_config

DOCUMENTS = [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", REPO_ROOT / "scripts" / "README.md",
             *sorted((REPO_ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_door_of_at_most_12_kb_that_maps_the_docs() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 12_000
    pages = {"options", "running", "outputs", "differences", "benchmarks", "architecture", "extending"}
    for page in pages:
        assert f"(docs/{page}.md)" in readme, page
    assert {path.stem for path in (REPO_ROOT / "docs").glob("*.md")} == pages


def test_the_worked_example_of_a_method_is_the_code_that_runs() -> None:
    """Each Python block of docs/extending.md's method section is, verbatim, in the file the section shows."""
    text = (REPO_ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    section = text[text.index("## Adding a method"):text.index("## Adding a dataset")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    sources = "".join((REPO_ROOT / "continual" / "method" / name).read_text() for name in ("er.py", "registry.py"))
    assert len(blocks) == 2 and all(block in sources for block in blocks)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_links_resolve_and_nothing_outside_the_repository_is_cited(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (document.parent / target).exists(), target
    assert not re.search(r"SPEC|BENCHMARKS\.md|STYLE\.md|\.\./shared", text)
    if document.name != "CHANGELOG.md":  # history may name the issues; the other documents say what, not when
        assert not re.search(r"\bissue \d+", text, re.IGNORECASE)


def shell_blocks(text: str) -> list[str]:
    """The contents of the fenced blocks marked bash or sh, or unmarked (a fence opens and closes a block:
    the text between two blocks is never taken for one)."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                if language in ("", "bash", "sh"):
                    blocks.append("\n".join(lines) + "\n")
                language = None
        elif language is not None:
            lines.append(line)
    return blocks


def commands(document: Path) -> list[list[str]]:
    """The main.py / train.sh commands of the document's code blocks that are complete (no placeholder)."""
    found = []
    for block in shell_blocks(document.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].split("&&")[-1].strip().removesuffix("&").strip()  # a launch in the background
            if ("main.py" in line or "train.sh" in line) and not re.search(r"\.\.\.|\[|DIR|GPUS|\.yaml [A-Z]", line):
                found.append(shlex.split(line))
    return found


def test_every_complete_command_parses_and_multi_gpu_runs_name_their_memory_protocol() -> None:
    parsed = 0
    for document in DOCUMENTS:
        for words in commands(document):
            start = words.index("main.py") + 1 if "main.py" in words else words.index("train.sh") + 2
            if "main.py" not in words and words[start - 1] == "cpu" and words[start].isdigit():
                start += 1  # train.sh cpu N: the process count
            cfg = parse_config(words[start:])  # option files exist, values are valid
            parsed += 1
            gpus = words[words.index("train.sh") + 1] if "train.sh" in words else "cpu"
            if "," in gpus and cfg.memory_size:
                assert cfg.distributed_memory or cfg.global_memory or cfg.published_memory, (document, words)
    assert parsed >= 5  # the demo, the CIFAR runs of README.md and docs/running.md, ImageNet-100 and -1000
