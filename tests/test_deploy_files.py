"""The deployment files and the documents that describe them tell one story.

An operator follows README.md, docs/operations.md and deploy/ as written: the number of nodes and their
ports must be the same in the nginx upstream, the Procfile and every example, and the nodes must trust
nginx's address (TRUSTED_PROXIES) wherever nginx is in front of them, or every client is nginx's
127.0.0.1 to the per-address limits.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def upstream_block(text: str, name: str) -> str:
    start = text.index(f"upstream {name} {{")
    return text[start : text.index("}", start)]


def production_ports() -> list[int]:
    """The ports of deploy/nginx.conf's upstream: the reference every other file is checked against."""
    block = upstream_block((DEPLOY / "nginx.conf").read_text(), "chat_nodes")
    ports = [int(p) for p in re.findall(r"^\s*server 127\.0\.0\.1:(\d+)\b", block, re.MULTILINE)]
    assert ports, block
    return ports


def section(text: str, heading: str) -> str:
    """A Markdown section: from its heading to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    following = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading) :], re.MULTILINE)
    return text[start : start + len(heading) + following.start()] if following else text[start:]


def port_lists(text: str) -> list[list[int]]:
    """Every list of node ports written out in a text: shell loops, systemctl lines, `8001 to 8003`."""
    lists = [[int(p) for p in found.split()] for found in re.findall(r"for port in ((?:\d{4,5} ?)+)", text)]
    lists += [[int(p) for p in re.findall(r"chat@(\d+)", line)] for line in re.findall(r"systemctl enable .*", text)]
    lists += [list(range(int(a), int(b) + 1)) for a, b in re.findall(r"\b(\d{4,5}) to (\d{4,5})\b", text)]
    return [found for found in lists if found]


def test_the_upstream_has_one_server_per_node() -> None:
    ports = production_ports()
    assert len(set(ports)) == len(ports), ports
    header = (DEPLOY / "nginx.conf").read_text().split("\n\n", 1)[0]
    [word] = re.findall(r"running (\w+) nodes", header)
    assert NUMBER_WORDS[word] == len(ports), header


def test_procfile_runs_the_upstream_nodes() -> None:
    text = (DEPLOY / "Procfile").read_text()
    commands = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert [int(p) for line in commands for p in re.findall(r"--port (\d+)", line)] == production_ports()
    # Each node its own stable NODE_ID (presence entries in Redis are named by it).
    node_ids = [re.search(r"NODE_ID=(\S+)", line) for line in commands]
    assert all(node_ids) and len({m.group(1) for m in node_ids if m}) == len(commands), commands
    [word] = re.findall(r"^# (\w+) nodes", text, re.MULTILINE)
    assert NUMBER_WORDS[word.lower()] == len(production_ports())


def test_readme_example_runs_the_upstream_nodes_behind_a_trusted_nginx() -> None:
    several = section(README.read_text(), "## Several nodes")
    assert port_lists(several) == [production_ports()], port_lists(several)
    [word] = re.findall(r"Running (\w+) nodes", several)
    assert NUMBER_WORDS[word] == len(production_ports())
    # nginx connects to the nodes from 127.0.0.1 (the upstream's addresses are loopback ones).
    assert re.search(r"\bTRUSTED_PROXIES=127\.0\.0\.1\b", several), "the example must trust nginx"


def test_operations_guide_names_the_upstream_nodes() -> None:
    text = OPERATIONS.read_text()
    ports = production_ports()
    lists = port_lists(text)
    assert lists and all(found == ports for found in lists), lists
    # The diagram and any `chat@<port>` or `127.0.0.1:<port>` name only those ports.
    named = {int(p) for p in re.findall(r"(?:chat@|127\.0\.0\.1:)(\d{4,5})\b", text)}
    assert named == set(ports), named
    counts = re.findall(r"(?:upstream of|the same) (\w+) nodes", text)
    assert counts and all(NUMBER_WORDS[word] == len(ports) for word in counts), counts


def test_env_sample_trusts_nginx_on_the_same_machine() -> None:
    text = (DEPLOY / "chat.env.sample").read_text()
    assert re.search(r"^TRUSTED_PROXIES=127\.0\.0\.1$", text, re.MULTILINE), "TRUSTED_PROXIES must be set"
    assert re.search(r"^HOST=127\.0\.0\.1$", text, re.MULTILINE), "nodes must listen where only nginx reaches"


def test_nginx_is_given_the_file_limit_its_workers_ask_for() -> None:
    """`worker_rlimit_nofile` only raises the soft limit up to the hard one: the systemd drop-in and the
    compose file must grant at least that much, or every worker logs an alert and runs short."""
    wanted = {int(n) for n in re.findall(r"^worker_rlimit_nofile (\d+);", (DEPLOY / "nginx.conf").read_text(), re.M)}
    compose_nginx = (DEPLOY / "nginx-compose.conf").read_text()
    wanted |= {int(n) for n in re.findall(r"^worker_rlimit_nofile (\d+);", compose_nginx, re.M)}
    [limit] = wanted
    drop_in = (DEPLOY / "nginx-limits.conf").read_text()
    assert (
        re.search(r"^\[Service\]$", drop_in, re.M)
        and int(re.findall(r"^LimitNOFILE=(\d+)$", drop_in, re.M)[0]) >= limit
    )
    assert "nginx.service.d/limits.conf" in OPERATIONS.read_text()
    import yaml

    nofile = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["nginx"]["ulimits"]["nofile"]
    assert min(nofile["soft"], nofile["hard"]) >= limit
