"""Sections of BENCHMARKS.md that a tool other than the full run writes
between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` markers, so that one
figure can be re-measured without re-running the whole suite, and so that
the full run keeps the sections it does not measure itself."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def read_section(md: Path, name: str) -> list[str] | None:
    """The lines between the markers of ``name`` in ``md``, if present."""
    if not md.exists():
        return None
    start, end = markers(name)
    text = md.read_text()
    if start not in text or end not in text:
        return None
    body = text.split(start, 1)[1].split(end, 1)[0]
    return body.strip("\n").splitlines()


def patch_section(md: Path, name: str, title: str, lines: list[str]) -> None:
    """Replaces section ``name`` of ``md`` with ``lines`` (appended under
    ``## title`` when the markers are missing)."""
    start, end = markers(name)
    text = md.read_text()
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + block + "\n"
    md.write_text(text)
