"""deploy/k8s: every manifest against the Kubernetes schemas (kubernetes-validate bundles them: no network), strict
(an unknown or misspelled field fails), and the wiring the schemas cannot see: the readiness probe is /ready, the
Secret, ConfigMap and PVCs the Deployment names exist, the artifact volume is ReadWriteMany and mounted where the
config's registry expects it, the Service reaches the pods; the replica alerts pass promtool's unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.prom import PrometheusMissing, ensure_prometheus

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
#: the oldest Kubernetes still supported upstream when this was written, and the newest schema bundled
VERSIONS = ("1.32.0", kubernetes_validate.latest_version())


def _docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in _docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_passes_the_kubernetes_schema(version):
    docs = _docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "Secret", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.caught.path)}")


def test_the_validator_catches_a_broken_manifest():
    dep = _one("Deployment")
    broken = yaml.safe_load(yaml.safe_dump(dep))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    typo = yaml.safe_load(yaml.safe_dump(dep))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, VERSIONS[-1], strict=True)


def test_the_deployment_is_wired_to_what_exists():
    dep = _one("Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    secrets = {e["secretRef"]["name"] for e in c["envFrom"]}
    assert secrets == {"safegene-keys"} and _one("Secret", "safegene-keys")
    keys = _one("Secret", "safegene-keys")["stringData"]
    assert {"SAFEGENE_API_KEYS", "SAFEGENE_ADMIN_KEYS", "PGPASSWORD"} <= set(keys)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    for v in volumes.values():
        if "persistentVolumeClaim" in v:
            _one("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
        if "configMap" in v:
            _one("ConfigMap", v["configMap"]["name"])
    cfg = yaml.safe_load(_one("ConfigMap", "safegene-config")["data"]["config.yaml"])
    assert mounts["/etc/safegene"] == "config" and "config.yaml" in c["args"][c["args"].index("--config") + 1]
    reg = cfg["registry"]
    assert reg["backend"] == "postgres" and "password" not in reg["dsn"]
    artifacts = volumes[mounts[reg["artifact_store"]]]["persistentVolumeClaim"]["claimName"]
    assert _one("PersistentVolumeClaim", artifacts)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert cfg["engine"]["max_lora_rank"] != "auto"  # every replica must accept the same adapters
    port = c["ports"][0]
    assert port["containerPort"] == cfg["server"]["port"] and cfg["server"]["host"] == "0.0.0.0"
    assert pod["terminationGracePeriodSeconds"] > cfg["server"]["drain_timeout_s"]
    for key in (cfg["auth"]["api_keys_env"], cfg["auth"]["admin_keys_env"]):
        assert key in keys
    svc = _one("Service", "safegene")
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]


def test_the_replica_alerts_fire_and_stay_quiet(tmp_path):
    try:
        promtool = ensure_prometheus()[1]
    except PrometheusMissing as e:
        pytest.skip(str(e))
    data = _one("ConfigMap", "safegene-prometheus")["data"]
    rules = tmp_path / "safegene-replicas.rules.yml"
    rules.write_text(data["safegene-replicas.rules.yml"])
    tests = tmp_path / "rules_test.yml"
    tests.write_text((K8S / "tests" / "rules_test.yml").read_text())
    prom = yaml.safe_load(data["prometheus.yml"])
    prom["rule_files"] = [str(rules)]
    (job,) = prom["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]  # pods, not endpoints: not-ready replicas are scraped
    # Debian's promtool is built without Kubernetes discovery: check the rest of the job with a static target
    job["static_configs"] = [{"targets": ["safegene:8000"]}]
    del job["kubernetes_sd_configs"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    alerts = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    assert "SafeGeneReplicasOnDifferentGenerations" in alerts
    for args in (["check", "config", str(tmp_path / "prometheus.yml")], ["check", "rules", str(rules)],
                 ["test", "rules", str(tests)]):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, " ".join(args) + "\n" + proc.stdout + proc.stderr
    # a mutated threshold makes the unit tests fail (they test something)
    rules.write_text(data["safegene-replicas.rules.yml"].replace("for: 5m", "for: 30m"))
    proc = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
