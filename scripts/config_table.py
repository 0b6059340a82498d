"""The README's configuration table, generated from Settings (a test checks that the README matches).

`python scripts/config_table.py` prints it; `--write` puts it into README.md between its markers.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.core.config import Settings


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for env, default, text in Settings.describe():
        shown = "(empty)" if default == "''" else f"`{default.strip(chr(39))}`"
        rows.append(f"| `{env}` | {shown} | {text.replace('|', '/')} |")
    return "\n".join(rows)


START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_with_table(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(readme_with_table(README.read_text()))
    else:
        print(table())
