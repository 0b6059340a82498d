"""The first install of deploy/nginx.conf, before any real certificate exists.

deploy/bootstrap-tls.sh puts a self-signed placeholder where nginx.conf expects the certificate and makes
the ACME challenge directory; then the production configuration passes `nginx -t` and runs, serving the
challenge for certbot's webroot mode. The test runs the script against temporary directories and a real
nginx on the production file, with only the machine's paths and ports moved.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import ssl
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.storage.embedded import free_port, wait_for_port
from tests.test_nginx import moved_config, nginx_binary, nginx_test

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCRIPT = DEPLOY / "bootstrap-tls.sh"
DOMAIN = "chat.example.com"


def bootstrap(cert_dir: Path, webroot: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return subprocess.run(
        [str(SCRIPT), "--cert-dir", str(cert_dir), "--webroot", str(webroot), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def production_conf(tmp: Path, cert_dir: Path, webroot: Path, http_port: int, https_port: int) -> Path:
    """deploy/nginx.conf with its includes, on loopback ports, with the machine's paths in `tmp`."""
    conf = moved_config(
        "nginx.conf",
        tmp,
        {
            "/etc/ssl/chat/": f"{cert_dir}/",
            "/var/www/acme": str(webroot),
            "/var/log/nginx/": f"{tmp}/",
            "/run/nginx.pid": f"{tmp}/nginx.pid",
        },
    )
    # A root master would run its workers as www-data, who cannot enter pytest's private directories;
    # and the compiled-in temporary directories may not be writable.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    for kind in kinds:
        (tmp / "temp" / kind).mkdir(parents=True)
    temp_paths = "".join(f"\n    {kind}_temp_path {tmp}/temp/{kind};" for kind in kinds)
    main = conf.read_text()
    main = main.replace("user www-data;", user if os.geteuid() == 0 else "").replace(
        "http {\n", "http {" + temp_paths + "\n", 1
    )
    conf.write_text(main)
    servers = conf.parent / "nginx-chat-servers.conf"
    text = servers.read_text()
    # IPv4 loopback only: the [::] listeners may have no IPv6 to bind here.
    text = re.sub(r"^\s*listen \[::\]:.*\n", "", text, flags=re.MULTILINE)
    text = re.sub(r"listen 80\b", f"listen 127.0.0.1:{http_port}", text)
    text = re.sub(r"listen 443\b", f"listen 127.0.0.1:{https_port}", text)
    assert text.count("listen 127.0.0.1:") == 4, text
    servers.write_text(text)
    return conf


def nginx_command(conf: Path, tmp: Path, *args: str) -> list[str]:
    return [nginx_binary(), *args, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]


# -- the script ----------------------------------------------------------------------------------------


def test_script_makes_a_placeholder_once(tmp_path: Path) -> None:
    certs, webroot = tmp_path / "ssl" / "chat", tmp_path / "acme"
    made = bootstrap(certs, webroot, DOMAIN)
    assert made.returncode == 0, made.stderr
    chain, key = certs / "fullchain.pem", certs / "privkey.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(chain.stat().st_mode) == 0o644
    assert (webroot / ".well-known" / "acme-challenge").is_dir()
    # Made for the name nginx serves: a client checking the name against it accepts it.
    verifier = ssl.create_default_context(cafile=str(chain))
    assert verifier.cert_store_stats()["x509_ca"] == 1
    assert not list(certs.glob(".bootstrap.*")), "the staging directory is removed"

    # Run again: an existing pair (a real certificate by then) is kept as it is.
    before = (chain.read_bytes(), key.read_bytes())
    again = bootstrap(certs, webroot, DOMAIN)
    assert again.returncode == 0 and "kept" in again.stdout, again
    assert (chain.read_bytes(), key.read_bytes()) == before


def test_script_refuses_half_a_pair_and_bad_names(tmp_path: Path) -> None:
    certs, webroot = tmp_path / "certs", tmp_path / "acme"
    certs.mkdir()
    (certs / "fullchain.pem").write_text("a certificate without its key\n")
    half = bootstrap(certs, webroot, DOMAIN)
    assert half.returncode == 1 and "only one of" in half.stderr, half
    assert not (certs / "privkey.pem").exists()
    assert (certs / "fullchain.pem").read_text() == "a certificate without its key\n"
    for bad in ("chat example.com", "/CN=evil", "localhost", "-x"):
        refused = bootstrap(tmp_path / "other", webroot, bad)
        assert refused.returncode == 2, (bad, refused)
        assert not (tmp_path / "other").exists()


# -- nginx on the placeholder ------------------------------------------------------------------------------


@dataclass
class Bootstrapped:
    tmp: Path
    cert_dir: Path
    webroot: Path
    http_port: int
    https_port: int


@pytest.fixture
def bootstrapped(tmp_path: Path) -> Iterator[Bootstrapped]:
    """The production nginx.conf running on nothing but the script's placeholder."""
    cert_dir, webroot = tmp_path / "certs", tmp_path / "acme"
    made = bootstrap(cert_dir, webroot, DOMAIN)
    assert made.returncode == 0, made.stderr
    http_port, https_port = free_port(), free_port()
    conf = production_conf(tmp_path, cert_dir, webroot, http_port, https_port)
    # What `nginx -t` says before the first start: fine, with nothing but the placeholder in place.
    nginx_test(conf, tmp_path)
    with open(tmp_path / "nginx.out", "wb") as out:
        nginx = subprocess.Popen(
            nginx_command(conf, tmp_path, "-g", "daemon off;"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(https_port, timeout_s=10, process=nginx)
        yield Bootstrapped(tmp_path, cert_dir, webroot, http_port, https_port)
    finally:
        nginx.terminate()
        nginx.wait(10)


def http_get(port: int, path: str, host: str) -> bytes:
    """A raw HTTP/1.0 request; the whole answer (b"" when the server closes without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_nginx_serves_the_acme_challenge_on_the_placeholder(bootstrapped: Bootstrapped) -> None:
    # certbot --webroot writes a token file here and the ACME server fetches it over plain HTTP.
    token = uuid.uuid4().hex
    (bootstrapped.webroot / ".well-known" / "acme-challenge" / token).write_text("key-authorization")
    answer = http_get(bootstrapped.http_port, f"/.well-known/acme-challenge/{token}", DOMAIN)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nkey-authorization"), answer
    # Anything else on port 80 goes to https; other names get no answer at all.
    redirect = http_get(bootstrapped.http_port, "/api/users/me/", DOMAIN)
    assert redirect.startswith(b"HTTP/1.1 301 "), redirect
    assert f"\r\nLocation: https://{DOMAIN}/api/users/me/\r\n".encode() in redirect, redirect
    assert http_get(bootstrapped.http_port, "/", "other.example.net") == b""


def test_tls_needs_the_server_name(bootstrapped: Bootstrapped) -> None:
    # With SNI the placeholder is presented, and it verifies for the name.
    verified = ssl.create_default_context(cafile=str(bootstrapped.cert_dir / "fullchain.pem"))
    with (
        socket.create_connection(("127.0.0.1", bootstrapped.https_port), timeout=5) as raw,
        verified.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # Without it (curl https://<address>/ sends none for an IP address), the default server refuses the
    # handshake itself, whatever the client would accept.
    anything = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anything.check_hostname = False
    anything.verify_mode = ssl.CERT_NONE
    for name in (None, "127.0.0.1"):
        with (
            socket.create_connection(("127.0.0.1", bootstrapped.https_port), timeout=5) as raw,
            pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"),
        ):
            anything.wrap_socket(raw, server_hostname=name)
