#!/usr/bin/env python3
"""Checks that every relative link in the repository's Markdown files points to a file or
directory that exists, and that a `#fragment` pointing into a Markdown file names one of its
headings. Links to public URLs (http, https, mailto) are not fetched. Exits 1 on a broken link.

Usage: scripts/check_links.py [FILE.md ...]   (default: README.md and docs/**/*.md)
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# [text](target) and [text](target "title"); images too. Code spans and blocks are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def anchors(md: pathlib.Path) -> set:
    """GitHub-style anchors of a Markdown file's headings."""
    out = set()
    for line in FENCE.sub("", md.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[`*_\[\]()]", "", m.group(1)).strip().lower()
            text = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            out.add(text)
    return out


def check(md: pathlib.Path) -> list:
    errors = []
    text = CODE.sub("", FENCE.sub("", md.read_text(encoding="utf-8")))
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # http:, https:, mailto: ...
        path, _, fragment = target.partition("#")
        dest = md if not path else (md.parent / path).resolve()
        where = f"{md.relative_to(ROOT)}: {target}"
        if not dest.exists():
            errors.append(f"{where}: no such file")
        elif ROOT not in dest.parents and dest != ROOT:
            errors.append(f"{where}: points outside the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            errors.append(f"{where}: no heading #{fragment}")
    return errors


def main() -> int:
    files = [pathlib.Path(a).resolve() for a in sys.argv[1:]] or [ROOT / "README.md"] + sorted(
        (ROOT / "docs").rglob("*.md")
    )
    errors = [e for f in files for e in check(f)]
    for e in errors:
        print(f"broken link: {e}", file=sys.stderr)
    print(f"checked {len(files)} Markdown files: {len(errors)} broken links")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
