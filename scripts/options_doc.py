"""Write docs/options.md from the option table (continual/config/options.py), or check that it is current.

    python scripts/options_doc.py            # rewrite docs/options.md
    python scripts/options_doc.py --check    # exit 1 when docs/options.md differs from the table (.ci/checks)

Every line of the page comes from the options' records: group, spellings, default, bounds or choices,
help, whether the option may change when a run is resumed, and the options that have no effect.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continual.config.options import OPTION_GROUPS, OPTIONS, Option  # noqa: E402
from continual.config.parser import shown_default  # noqa: E402

PAGE = REPO / "docs" / "options.md"

HEADER = """\
# Options

Generated from the option table (`continual/config/options.py`) by `python scripts/options_doc.py`; do not
edit by hand (`.ci/checks` fails when this page is stale).

Every option is a command-line flag and a key of the YAML option files (dashes become underscores:
`--memory-size 2000` or `memory_size: 2000`). Values come from the defaults, then the option files in
order (later files win), then the command line, which wins over every file. A value outside the listed
values is a one-line error naming the option (and the file), before any work.

**On resume**: `--resume DIR`, `--resume DIR --start-task K` and `--eval --resume DIR` compare the
configuration saved in the run folder with the new one and refuse a run where an option marked *must
match* differs; those marked *may change* change where files go or what is reported, not what is
computed. The options marked *no effect* are accepted for the published command lines, change nothing,
and may change too.
"""


def cell(text: str) -> str:
    """Markdown table cell: pipes escaped."""
    return text.replace("|", "\\|")


def values(option: Option) -> str:
    if option.choices is not None:
        return ", ".join(f"`{choice}`" if choice != "" else "`''`" for choice in option.choices)
    if option.bounds is not None:
        return str(option.bounds) + (" each" if option.nargs else "")
    return ""


def row(option: Option) -> str:
    spellings = ", ".join(f"`{flag}`" for flag in option.flags)
    resume = "no effect" if option.no_effect else ("may change" if option.resume_safe else "must match")
    return (f"| {spellings} | `{cell(shown_default(option))}` | {cell(values(option))} | {cell(option.help)} "
            f"| {resume} |")


def page() -> str:
    sections = [HEADER]
    for group in OPTION_GROUPS:
        rows = [row(option) for option in OPTIONS.values() if option.group == group]
        sections.append(f"## {group}\n\n| option | default | values | meaning | on resume |\n|---|---|---|---|---|\n"
                        + "\n".join(rows) + "\n")
    return "\n".join(sections)


def main() -> int:
    parser = argparse.ArgumentParser(description="Write docs/options.md from the option table, or --check it.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/options.md is not the table's page")
    args = parser.parse_args()
    expected = page()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text(encoding="utf-8") != expected:
            print(f"{PAGE.relative_to(REPO)} is stale: run python scripts/options_doc.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(expected, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(REPO)} ({len(OPTIONS)} options)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
