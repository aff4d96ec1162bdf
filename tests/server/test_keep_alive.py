"""HTTP keep-alive: the server keeps an idle connection open longer than its clients do (server.keep_alive_s).

Why it matters: httpx (and so the OpenAI SDKs) drop an idle pooled connection after 5 s; vLLM's own server default
is also 5 s, so now and then the server closed a connection in the instant a client reused it and the client saw a
reset (the 64-client soak test met one ``ReadError`` in 2,395 requests)."""

from __future__ import annotations

import socket
import time

import pytest
import yaml

from server.config import DEFAULT_KEEP_ALIVE_S, ConfigError, load_config

IDLE_S = 6.0  # past the 5 s that vLLM's server and httpx use


def _load(tmp_path, server: dict):
    from safegene_runtime.testing.tiny import make_tiny_model

    make_tiny_model(tmp_path / "base")
    p = tmp_path / "server.yaml"
    p.write_text(yaml.safe_dump({"base": {"model": str(tmp_path / "base"), "served_name": "tiny"}, "server": server}))
    return load_config(p)


def test_keep_alive_default_outlasts_the_clients_and_bad_values_are_refused(tmp_path):
    assert _load(tmp_path, {}).keep_alive_s == DEFAULT_KEEP_ALIVE_S > 60  # > httpx's 5 s and a load balancer's 60 s
    assert _load(tmp_path, {"keep_alive_s": 10}).keep_alive_s == 10.0
    for bad in (0, -1, "long", True):
        with pytest.raises(ConfigError, match="server.keep_alive_s"):
            _load(tmp_path, {"keep_alive_s": bad})


def _get(sock: socket.socket, host: str, key: str) -> bytes:
    """One keep-alive GET /v1/models on ``sock``; returns the status line (the body is read to its end)."""
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection (read so far: {buf[:80]!r})")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection inside a body")
        body += chunk
    return head.split(b"\r\n")[0]


@pytest.mark.engine
def test_an_idle_connection_is_still_open_after_the_clients_own_expiry(live_server):
    host, port = live_server.root_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        assert _get(sock, host, live_server.api_key).endswith(b"200 OK")
        time.sleep(IDLE_S)
        # the same connection, reused after the idle time: with a 5 s server timeout this read gets EOF or a reset
        assert _get(sock, host, live_server.api_key).endswith(b"200 OK")
