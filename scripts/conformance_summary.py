"""Summarises an Autobahn|Testsuite fuzzingclient run (scripts/conformance.sh) and judges it.

A case passes when Autobahn grades it OK, NON-STRICT or INFORMATIONAL, or when it sends a message larger
than MAX_FRAME_BYTES and the server closed with 1009: Autobahn grades those FAILED (it expects an echo),
but refusing them is the documented limit. A message over the limit that was echoed, any other failure,
or a traceback in the server log fails the run (exit status 1).

`--write FILE` replaces the part of FILE between the conformance markers with the tables.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

CHAPTERS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits/performance",
    "10": "Miscellaneous",
}
GOOD = ("OK", "NON-STRICT", "INFORMATIONAL")
OVER_LIMIT = "1009 (over limit)"
START, END = "<!-- conformance:start -->", "<!-- conformance:end -->"
SIZE_PATTERNS = (
    re.compile(r"length (\d+) \* 2\*\*(\d+)"),
    re.compile(r"(?:length|payload size) (\d+)()"),
)


def case_key(case_id: str) -> list[int]:
    return [int(part) for part in case_id.split(".")]


def message_bytes(description: str) -> int | None:
    """The size of the message a case sends, from its description ("length 4 * 2**20 (4M)")."""
    for pattern in SIZE_PATTERNS:
        found = pattern.search(description)
        if found:
            return int(found.group(1)) * (1 << int(found.group(2) or 0))
    return None


def judge(case: dict[str, object], size: int | None, limit: int) -> tuple[str, str | None]:
    """(outcome, problem or None)."""
    behavior = str(case["behavior"])
    over = size is not None and size > limit
    if over and case.get("remoteCloseCode") == 1009:
        return OVER_LIMIT, None
    if over and behavior == "OK":
        return behavior, f"a {size}-byte message was echoed although MAX_FRAME_BYTES is {limit}"
    if behavior in GOOD:
        return behavior, None
    return behavior, f"{behavior}: {case.get('result')} (close code {case.get('remoteCloseCode')})"


def summarise(reports: Path, server_log: Path, limit: int) -> tuple[str, list[str]]:
    index = json.loads((reports / "index.json").read_text())
    problems: list[str] = []
    per_chapter: dict[str, Counter[str]] = {}
    notable: list[tuple[str, str, str]] = []
    for agent_cases in index.values():
        for case_id in sorted(agent_cases, key=case_key):
            case = agent_cases[case_id]
            detail = json.loads((reports / case["reportfile"]).read_text())
            size = message_bytes(detail.get("description", ""))
            outcome, problem = judge({**case, "result": detail.get("result")}, size, limit)
            per_chapter.setdefault(case_id.split(".")[0], Counter())[outcome] += 1
            if problem:
                problems.append(f"{case_id}: {problem}")
            if outcome != "OK":
                text = re.sub(r"<[^>]+>", "", detail.get("description", "")).strip().splitlines()
                notable.append((case_id, outcome, text[0] if text else ""))
    log_text = server_log.read_text(errors="replace") if server_log.exists() else ""
    tracebacks = log_text.count("Traceback")
    errors = sum(1 for line in log_text.splitlines() if " ERROR " in line)
    if tracebacks or errors:
        problems.append(f"server log: {tracebacks} tracebacks, {errors} ERROR lines")

    columns = ["OK", "NON-STRICT", "INFORMATIONAL", OVER_LIMIT, "FAILED"]
    lines = [
        f"MAX_FRAME_BYTES = {limit}. Outcomes as graded by Autobahn; `{OVER_LIMIT}` counts the cases whose",
        "message is larger than MAX_FRAME_BYTES and that the server closed with 1009 (Autobahn grades them",
        "FAILED because it expects an echo).",
        "",
        "| chapter | cases | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    total: Counter[str] = Counter()
    for chapter in sorted(per_chapter, key=int):
        counts = per_chapter[chapter]
        total.update(counts)
        other = sum(n for k, n in counts.items() if k not in columns)
        cells = [str(counts[c] + (other if c == "FAILED" else 0)) for c in columns]
        lines.append(f"| {chapter} {CHAPTERS.get(chapter, '')} | {sum(counts.values())} | " + " | ".join(cells) + " |")
    other = sum(n for k, n in total.items() if k not in columns)
    cells = [str(total[c] + (other if c == "FAILED" else 0)) for c in columns]
    lines.append(f"| **all** | {sum(total.values())} | " + " | ".join(cells) + " |")
    lines += ["", "Cases not graded OK:", "", "| case | outcome | what it sends |", "|---|---|---|"]
    lines += [f"| {case_id} | {outcome} | {text} |" for case_id, outcome, text in notable]
    lines += ["", f"Server log: {tracebacks} tracebacks, {errors} ERROR lines."]
    return "\n".join(lines), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=Path, required=True)
    parser.add_argument("--server-log", type=Path, required=True)
    parser.add_argument("--max-frame-bytes", type=int, required=True)
    parser.add_argument("--write", type=Path, help="document whose marked section receives the tables")
    args = parser.parse_args()
    table, problems = summarise(args.reports, args.server_log, args.max_frame_bytes)
    print(table)
    if args.write is not None:
        text = args.write.read_text()
        head, start, rest = text.partition(START)
        _, end, tail = rest.partition(END)
        if not start or not end:
            print(f"{args.write} lacks the {START} / {END} markers", file=sys.stderr)
            return 2
        args.write.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    if problems:
        print("\nconformance: FAILED", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print("\nconformance: every case OK, NON-STRICT, INFORMATIONAL or closed 1009 over the frame limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
