"""Registry durability without an engine: admin entries come back from their checked snapshots, a bad snapshot is
refused alone, unreferenced build folders are collected, and a registration is checked from file headers first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from safegene_runtime.adapters import AdapterError, inspect_adapter
from server.build import build_task
from server.config import load_config, parse_task
from server.registry import Registry
from tests.plugins.live_server import build_tiny_family, tiny_config, write_config


@pytest.fixture
def setup(tmp_path, tiny_model):
    from safegene_runtime.testing.tiny import make_random_lora

    family = build_tiny_family(tmp_path / "fam", base=tiny_model)
    for name, seed in (("adm-a", 51), ("adm-b", 52)):
        make_random_lora(family["adapter_root"] / name, tiny_model, rank=8, seed=seed)
    cfg_path = write_config(tmp_path / "server.yaml", tiny_config(tmp_path, family, port=1, judges=[]))
    return family, cfg_path


def _admin_entries(cfg_path: Path, family, names: list[str]) -> Registry:
    """A registry that served the config entries plus admin entries ``names``, saved as a restart would find it."""
    reg = Registry(load_config(cfg_path))
    reg.build_startup()
    for name in names:
        spec = parse_task({"name": name, "path": name, "coefficients": str(family["coefficients"])},
                          family["adapter_root"], "test")
        reg.records[name] = build_task(spec, reg.ctx, source="admin")
    reg.persist()
    return reg


def _restart(cfg_path: Path) -> Registry:
    reg = Registry(load_config(cfg_path))
    reg.build_startup()
    return reg


def test_admin_entries_come_back_from_snapshots_even_without_their_source(setup):
    family, cfg_path = setup
    first = _admin_entries(cfg_path, family, ["adm-a"])
    before = first.records["adm-a"].to_dict()
    shutil.rmtree(family["adapter_root"] / "adm-a")  # the source is gone: the snapshot still serves
    again = _restart(cfg_path)
    assert again.records["adm-a"].to_dict() == before and not again.unavailable


def test_a_changed_snapshot_refuses_that_entry_alone(setup):
    family, cfg_path = setup
    first = _admin_entries(cfg_path, family, ["adm-a", "adm-b"])
    safe = Path(first.records["adm-a"].variants["safe"].path) / "adapter_model.safetensors"
    data = bytearray(safe.read_bytes())
    data[-1] ^= 0xFF
    safe.write_bytes(bytes(data))
    again = _restart(cfg_path)
    assert "adm-a" not in again.records and "adm-b" in again.records and "alpha" in again.records
    assert "changed since it was built" in again.unavailable["adm-a"]["reason"]
    assert REGISTRY.get_sample_value("safegene_registry_unavailable", {"task": "adm-a"}) == 1
    assert again.describe()["unavailable"]["adm-a"]["version"] == first.records["adm-a"].version
    again.persist()  # the refused entry stays in the state: fixing the snapshot and restarting brings it back
    assert "adm-a" in json.loads((Path(again.cfg.state_dir) / "registry.json").read_text())["tasks"]
    shutil.rmtree(safe.parent)
    third = _restart(cfg_path)
    assert "is missing" in third.unavailable["adm-a"]["reason"] and "adm-b" in third.records


def test_folders_no_record_refers_to_are_collected(setup):
    family, cfg_path = setup
    first = _admin_entries(cfg_path, family, ["adm-a"])
    store = Path(first.cfg.state_dir) / "adapters"
    orphan = store / "orphan-0123456789ab"
    shutil.copytree(first.records["adm-a"].variants["plain"].path, orphan)
    (store / ".tmp-killed-build").mkdir()
    kept = {Path(v.path).name for r in first.records.values() for v in r.variants.values()}
    _restart(cfg_path)
    assert not orphan.exists() and not (store / ".tmp-killed-build").exists()
    assert kept <= {p.name for p in store.iterdir()}


def test_headers_are_checked_before_any_tensor(tmp_path, setup):
    family, _ = setup
    src = family["adapter_root"] / "adm-a"
    assert inspect_adapter(src).max_rank == 8
    with pytest.raises(AdapterError, match="over the limit of 4"):
        inspect_adapter(src, max_rank=4)

    def variant(name: str, edit) -> Path:
        d = tmp_path / name
        shutil.copytree(src, d)
        edit(d)
        return d

    w = "adapter_model.safetensors"
    cases = {
        "truncated": (lambda d: (d / w).write_bytes((d / w).read_bytes()[:-100]), "truncated"),
        "huge header": (lambda d: (d / w).write_bytes((10**9).to_bytes(8, "little") + b"{}"), "header claims"),
        "not json": (lambda d: (d / w).write_bytes((4).to_bytes(8, "little") + b"nope" + b"\0" * 64), "not valid JSON"),
        "bin only": (lambda d: (d / w).rename(d / "adapter_model.bin"), "only safetensors"),
        "symlink": (lambda d: ((d / w).unlink(), (d / w).symlink_to(src / w)), "symbolic link"),
    }
    for name, (edit, needle) in cases.items():
        with pytest.raises(AdapterError, match=needle):
            inspect_adapter(variant(name.replace(" ", "-"), edit))
