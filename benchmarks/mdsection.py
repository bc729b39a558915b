"""Replace one generated section of BENCHMARKS.md, leaving every other section as it is.

Each benchmark owns the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``;
a section that is not there yet is appended at the end of the file.
"""

from __future__ import annotations

from pathlib import Path

MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(name: str, text: str, path: Path = MD) -> None:
    """Put ``text`` between the markers of section ``name`` in ``path``."""
    begin, end = markers(name)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    md = path.read_text() if path.exists() else "# edgemq benchmarks\n"
    if begin in md and end in md:
        head, rest = md.split(begin, 1)
        _, tail = rest.split(end, 1)
        md = head + block + tail
    else:
        md = md.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(md)
