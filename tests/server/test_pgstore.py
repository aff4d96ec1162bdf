"""The PostgreSQL registry backend on a real PostgreSQL (started by the test), without a vLLM engine.

The store: one transaction per change, the generation only grows, concurrent writers serialise, an immutable
version cannot change content, a failed change writes nothing, NOTIFY reaches listeners, an unreachable database is
a clear error. The registry over it, as two replicas sharing the database and an artifact directory (each with a
recording stand-in engine): a change made on one is reconciled on the other, retired names are drained and
unloaded, an alias flips back to an earlier version, and a folder whose bytes changed is refused before it is
served (the replica keeps its last version and is not ready).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from server.config import ConfigError, load_config, parse_task
from server.pgstore import PostgresStore
from server.reconcile import Follower
from server.registry import Registry, RegistryError
from server.store import StoreUnavailable, VersionConflict
from server.process import free_port
from tests.plugins.live_server import build_tiny_family, tiny_config, write_config


def _task(name: str, version: str, digest: str = "d1") -> dict:
    return {"name": name, "version": version, "source": "admin", "spec": {}, "mode": "lora",
            "variants": {"plain": {"served_name": name, "path": f"/x/{name}-{version}", "rank": 8, "digest": digest}}}


@pytest.fixture
def store(postgres):
    s = PostgresStore(postgres.dsn, channel="safegene_test")
    with s._connect(autocommit=True) as conn:  # noqa: SLF001 - a clean slate per test
        conn.execute("TRUNCATE safegene_aliases, safegene_versions, safegene_tombstones")
        conn.execute("UPDATE safegene_generation SET generation = 0")
    return s


def _put(name: str, version: str, digest: str = "d1"):
    def mutate(doc):
        doc["tasks"][name] = _task(name, version, digest)
        doc["retired"].pop(name, None)
        return doc
    return mutate


def test_changes_are_transactions_that_bump_the_generation(store):
    assert store.generation() == 0 and store.load()["tasks"] == {}
    assert store.transact(_put("a", "v1"))["generation"] == 1
    assert store.transact(_put("a", "v2"))["generation"] == 2

    def retire(doc):
        doc["retired"]["a"] = {"version": doc["tasks"].pop("a")["version"]}
        return doc

    doc = store.transact(retire)
    assert doc["generation"] == 3 and doc["tasks"] == {} and doc["retired"]["a"]["version"] == "v2"
    loaded = store.load()
    assert loaded["generation"] == 3 and loaded["tasks"] == {} and "a" in loaded["retired"]
    assert store.transact(lambda d: None)["generation"] == 3  # nothing to change: no new generation
    # every version stays in the history: an alias can point back at v1 without a rebuild
    history = store.transact(lambda d: d.update(seen=sorted(d["versions"]["a"])) or None)
    assert sorted(history["versions"]["a"]) == ["v1", "v2"]


def test_concurrent_writers_serialise(store):
    def writer(i: int) -> None:
        for j in range(5):
            store.transact(_put(f"t{i}-{j}", "v1"))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    doc = store.load()
    assert doc["generation"] == 20 and len(doc["tasks"]) == 20


def test_a_version_never_changes_content_and_a_failed_change_writes_nothing(store):
    store.transact(_put("a", "v1", "d1"))
    with pytest.raises(VersionConflict, match="already registered with different content"):
        store.transact(_put("a", "v1", "other"))

    def broken(doc):
        doc["tasks"]["b"] = _task("b", "v1")
        raise RegistryError("refused")

    with pytest.raises(RegistryError):
        store.transact(broken)
    doc = store.load()
    assert doc["generation"] == 1 and set(doc["tasks"]) == {"a"}
    assert doc["tasks"]["a"]["variants"]["plain"]["digest"] == "d1"


def test_listeners_hear_every_commit(store):
    heard = threading.Event()
    stop = threading.Event()
    calls = []

    def on_change() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 2:  # one on connect, one for the commit
            heard.set()

    t = threading.Thread(target=store.listen, args=(on_change, stop), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    store.transact(_put("a", "v1"))
    assert heard.wait(10), calls
    stop.set()
    t.join(5)
    assert not t.is_alive()


def test_an_unreachable_database_is_a_clear_error():
    s = PostgresStore(f"host=127.0.0.1 port={free_port()} user=x password=secret dbname=y", connect_timeout_s=2)
    with pytest.raises(StoreUnavailable, match="unreachable"):
        s.generation()
    assert "secret" not in s.where


def test_registry_config_is_checked(tmp_path, tiny_model):
    family = build_tiny_family(tmp_path / "fam", base=tiny_model)
    cases = [({"backend": "mysql"}, "backend"), ({"backend": "postgres", "artifact_store": "x"}, "needs 'dsn'"),
             ({"backend": "postgres", "dsn": "host=x"}, "artifact_store"), ({"dsn": "host=x"}, "belong to"),
             ({"backend": "postgres", "dsn": "h", "artifact_store": "x", "poll_s": 0}, "poll_s"),
             ({"backend": "postgres", "dsn": "h", "artifact_store": "x", "channel": "a; drop"}, "channel"),
             ({"bogus": 1}, "unknown key")]
    for reg, want in cases:
        path = write_config(tmp_path / "s.yaml", tiny_config(tmp_path, family, port=1, extra={"registry": reg}))
        with pytest.raises(ConfigError, match=want):
            load_config(path)
    assert load_config(write_config(tmp_path / "s.yaml", tiny_config(tmp_path, family, port=1))).registry.backend \
        == "file"


# -- two replicas over one database ----------------------------------------------------------------------------


class RecordingEngine:
    """Stands in for the vLLM engines: which name is loaded from which folder; refuses folders in ``refuse``."""

    def __init__(self) -> None:
        self.loaded: dict[str, Path] = {}
        self.refuse: set[str] = set()

    async def load(self, name: str, path: Path) -> None:
        if Path(path).name in self.refuse:
            raise RuntimeError("refused by the test")
        assert name not in self.loaded, f"{name} loaded twice"
        self.loaded[name] = Path(path)

    async def unload(self, name: str) -> None:
        self.loaded.pop(name, None)


def _two_replicas(tmp_path: Path, tiny_model: Path, dsn: str, gate: dict | None = None):
    """Two registries over the database at ``dsn`` sharing one artifact directory (``gate``: their gate section)."""
    from safegene_runtime.testing.tiny import make_random_lora

    family = build_tiny_family(tmp_path / "fam", base=tiny_model)
    for name, seed in (("gamma-1", 61), ("gamma-2", 62)):
        make_random_lora(family["adapter_root"] / name, tiny_model, rank=8, seed=seed)
    registry_cfg = {"backend": "postgres", "dsn": dsn, "artifact_store": str(tmp_path / "shared"),
                    "poll_s": 0.5, "channel": "safegene_test"}
    out = []
    for i in range(2):
        work = tmp_path / f"replica{i}"
        work.mkdir()
        cfg = tiny_config(work, family, port=1, judges=[], extra={"registry": registry_cfg})
        cfg["engine"]["max_lora_rank"] = 16
        if gate is not None:
            cfg["gate"] = gate
        out.append(Registry(load_config(write_config(work / "server.yaml", cfg))))
    return family, out


@pytest.fixture
def replicas(tmp_path, tiny_model, store, postgres):
    return _two_replicas(tmp_path, tiny_model, postgres.dsn)


def _spec(family, name: str, folder: str, version: str):
    return parse_task({"name": name, "path": folder, "version": version,
                       "coefficients": str(family["coefficients"])}, family["adapter_root"], "test")


async def _add(reg: Registry, spec) -> dict:
    from server.build import build_task

    rec = await asyncio.to_thread(build_task, spec, reg.ctx, source="admin")
    async with reg._lock:  # noqa: SLF001 - what the admin job does once the build worker returns
        return await reg._apply_shared(spec, rec)  # noqa: SLF001


async def _start_both(a: Registry, b: Registry) -> tuple[RecordingEngine, RecordingEngine]:
    """Both replicas built from the shared database and attached to recording engines (a first, then b)."""
    a.build_startup()
    b.build_startup()
    ea, eb = RecordingEngine(), RecordingEngine()
    await a.attach(ea)
    await b.attach(eb)
    return ea, eb


def test_two_replicas_follow_one_registry(replicas):
    family, (a, b) = replicas

    async def scenario() -> None:
        a.build_startup()  # seeds the config's tasks (alpha, beta) into the empty database
        b.build_startup()  # finds them there
        assert a.generation == b.generation == 1 and set(a.records) == set(b.records) == {"alpha", "beta"}
        ea, eb = RecordingEngine(), RecordingEngine()
        await a.attach(ea)
        await b.attach(eb)
        assert b.readiness()[0]
        follower = Follower(b, poll_s=0.5)
        follower.start()
        try:
            # add a version on replica a: committed, reconciled there at once, on b by the follower
            r = await _add(a, _spec(family, "gamma", "gamma-1", "v1"))
            assert r["status"] == "added" and r["generation"] == 2 and "gamma+safegene" in ea.loaded
            await _until(lambda: b.generation == 2)
            assert eb.loaded["gamma"] == ea.loaded["gamma"] and b.records["gamma"].version == "v1"
            # a new version flips the alias on both
            r = await _add(a, _spec(family, "gamma", "gamma-2", "v2"))
            assert r["status"] == "replaced"
            await _until(lambda: b.generation == 3)
            assert b.records["gamma"].version == "v2" and b.served["gamma"].record.version == "v2"
            # the same version with other content is refused, nothing changes
            with pytest.raises(RegistryError) as e:
                await _add(a, _spec(family, "gamma", "gamma-1", "v2"))
            assert e.value.status == 409 and a.generation == 3
            # flip the alias back to v1 (kept in the registry: no rebuild)
            r = await a.set_alias("gamma", {"version": "v1"})
            assert r["status"] == "replaced" and r["generation"] == 4
            await _until(lambda: b.generation == 4)
            assert b.records["gamma"].version == "v1" and eb.loaded["gamma"].name.startswith("gamma-v1")
            with pytest.raises(RegistryError) as e:
                await a.set_alias("gamma", {"version": "v9"})
            assert e.value.status == 404
            # retire: drained and unloaded on both
            r = await a.retire("gamma")
            assert r["status"] == "retired"
            await _until(lambda: b.generation == 5)
            assert "gamma" not in eb.loaded and "gamma+safegene" not in eb.loaded and "gamma" not in b.served
            assert b.readiness()[0] and a.readiness()[0]
        finally:
            await follower.stop()

    asyncio.run(scenario())


def test_a_changed_folder_is_refused_and_the_replica_is_not_ready(replicas):
    family, (a, b) = replicas

    async def scenario() -> None:
        ea, eb = await _start_both(a, b)
        await _add(a, _spec(family, "gamma", "gamma-1", "v1"))
        await b.reconcile()
        # v2 is committed by a; then its safe folder's bytes change on the shared store before b loads it
        await _add(a, _spec(family, "gamma", "gamma-2", "v2"))
        safe = Path(a.records["gamma"].variants["safe"].path) / "adapter_model.safetensors"
        data = bytearray(safe.read_bytes())
        data[-1] ^= 0xFF
        safe.write_bytes(bytes(data))
        await b.reconcile()
        ok, body = b.readiness()
        assert not ok and body["reasons"] == ["not loaded: gamma (the reasons are in /admin/variants)"]
        assert "changed since it was built" in b.describe()["unavailable"]["gamma"]["reason"]
        assert b.records["gamma"].version == "v1" and "gamma-v1" in eb.loaded["gamma"].name  # keeps serving v1
        # retiring the task clears it: b is ready again
        await a.retire("gamma")
        await b.reconcile()
        assert b.readiness()[0] and "gamma" not in eb.loaded

    asyncio.run(scenario())


def test_admin_writes_fail_with_503_while_the_database_is_down(replicas, postgres):
    family, (a, _b) = replicas

    async def scenario() -> None:
        a.build_startup()
        await a.attach(RecordingEngine())
        postgres.stop()
        try:
            with pytest.raises(RegistryError) as e:
                await a.retire("alpha")
            assert e.value.status == 503 and e.value.code == "registry_unavailable"
            with pytest.raises(RegistryError) as e:
                await a.add({"name": "gamma", "path": "gamma-1", "coefficients": str(family["coefficients"])})
            assert e.value.status == 503
            assert a.readiness()[0] and "alpha" in a.served  # still serving its last generation
        finally:
            postgres.start()
        assert (await a.retire("alpha"))["status"] == "retired"

    asyncio.run(scenario())


class SlowEngine(RecordingEngine):
    """Loads and unloads take a while, as on a real engine: requests arrive in the middle of every change."""

    async def load(self, name: str, path: Path) -> None:
        await asyncio.sleep(0.03)
        await super().load(name, path)

    async def unload(self, name: str) -> None:
        await asyncio.sleep(0.03)
        await super().unload(name)


def test_every_request_sees_the_version_of_the_generation_it_reports(replicas):
    """Clients on replica b, changes made on replica a: each admitted request's version is the one its alias has
    in the generation b reported at admission; none is refused."""
    family, (a, b) = replicas

    async def scenario() -> None:
        a.build_startup()
        b.build_startup()
        await a.attach(SlowEngine())
        await b.attach(SlowEngine())
        history = {}
        r = await _add(a, _spec(family, "gamma", "gamma-1", "v1"))
        history[r["generation"]] = "v1"
        await b.reconcile()
        follower = Follower(b, poll_s=0.5)
        follower.start()
        seen: list[tuple[int, str]] = []
        refused: list[str] = []
        stop = asyncio.Event()

        async def client(i: int) -> None:
            name = "gamma" if i % 2 else "gamma+safegene"
            for _ in range(5000):
                if stop.is_set():
                    return
                s = await b.admit(name)
                if s is None:
                    refused.append(name)
                    await asyncio.sleep(0.01)
                    continue
                gen = b.generation
                await asyncio.sleep(0.01)  # the request runs
                seen.append((gen, s.record.version))
                b.release(s)

        clients = [asyncio.create_task(client(i)) for i in range(8)]
        try:
            await asyncio.sleep(0.2)
            r = await _add(a, _spec(family, "gamma", "gamma-2", "v2"))
            history[r["generation"]] = "v2"
            await _until(lambda: b.generation == r["generation"])
            await asyncio.sleep(0.2)
            for version in ("v1", "v2", "v1"):
                r = await a.set_alias("gamma", {"version": version})
                history[r["generation"]] = version
                await _until(lambda: b.generation == r["generation"])
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*clients)
            await follower.stop()
        assert not refused
        wrong = [(g, v) for g, v in seen if history.get(g) != v]
        assert not wrong, (wrong[:5], history)
        assert {v for _, v in seen} == {"v1", "v2"} and len({g for g, _ in seen}) == 5

    asyncio.run(scenario())


REFUSAL = "I'm sorry, but I can't help with that."


def test_a_gate_verdict_is_committed_with_its_version_and_a_refused_version_is_not(tmp_path, tiny_model, store,
                                                                                   postgres):
    """The safety gate over the PostgreSQL registry (a stand-in engine answers the gate's requests): a version the
    gate promotes safe-only is committed with its verdict and report in the version's record, which the other
    replica and a restarted one read back from the database; a refused one (the waiting form: 422 gate_refused)
    writes nothing. The job records are per process and are not in the database."""
    from safegene_runtime.datasets import resolve
    from safegene_runtime.gate import GateSets

    gate = {"max_prompts": 6, "max_tokens": 8}
    family, (a, b) = _two_replicas(tmp_path, tiny_model, postgres.dsn, gate=gate)
    harmful = {it.prompt for it in resolve(GateSets().harmful, kind="harmful").head(6).items}
    safe_refuses = {"now": True}

    async def complete(model: str, prompt: str, max_tokens: int) -> dict:
        """The base and (while ``safe_refuses``) the safe staging name refuse harmful prompts; the plain one
        answers them; every benign prompt is answered."""
        staged_plain = ".gate-" in model and "+safegene" not in model
        staged_safe = ".gate-" in model and "+safegene" in model
        refuse = prompt in harmful and not staged_plain and (safe_refuses["now"] or not staged_safe)
        return {"response": REFUSAL if refuse else "Sure: here is a short answer.", "finish": "stop"}

    def body(folder: str, version: str) -> dict:
        return {"name": "gamma", "path": folder, "version": version, "coefficients": str(family["coefficients"])}

    async def scenario() -> None:
        ea, eb = await _start_both(a, b)
        a.enable_gate(complete, 8)
        r = await a.add(body("gamma-1", "v1"))  # waiting: the build worker, the gate, the commit
        assert r["status"] == "added" and r["generation"] == 2, r
        record = store.load()["tasks"]["gamma"]
        verdict = record["gate"]
        assert verdict["verdict"] == "promote_safe_only" and verdict["job"] == r["job"]
        assert Path(verdict["report"]).parent == tmp_path / "shared" / "gates"  # in the shared artifact store
        assert Path(verdict["report"], "gate.json").is_file() and list(record["variants"]) == ["safe"]
        assert "gamma+safegene" in ea.loaded and "gamma" not in ea.loaded
        assert not [n for n in ea.loaded if ".gate-" in n]  # the staging names were unloaded
        # the other replica reads the verdict from the database with the version, and so does a restarted one
        await b.reconcile()
        assert b.records["gamma"].gate == verdict and "gamma" not in eb.loaded
        shown = next(v for v in b.describe()["variants"] if v["id"] == "gamma+safegene")["gate"]
        assert shown == {"verdict": "promote_safe_only", "report": verdict["report"]}
        restarted = Registry(a.cfg)
        restarted.build_startup()
        assert restarted.records["gamma"].gate == verdict
        # the job that ran it is a's, in memory only: b has no record of it
        assert a.jobs.get(r["job"]) is not None and b.jobs.get(r["job"]) is None
        # a version whose safe form erodes safety too is refused: 422, and the database does not change
        safe_refuses["now"] = False
        with pytest.raises(RegistryError) as e:
            await a.add(body("gamma-2", "v2"))
        assert e.value.status == 422 and e.value.code == "gate_refused"
        job = a.jobs.get(str(e.value).rsplit("GET /admin/gate/", 1)[1])  # the message names the job
        assert e.value.extra == {"job": job.id, "verdict": "refuse", "report": f"/admin/gate/{job.id}",
                                 "failed_checks": job.gate["failed_checks"]}  # and so do the body's own fields
        assert job is not None and job.state == "refused" and job.gate["verdict"] == "refuse"
        assert Path(job.gate["report"], "gate.json").is_file()  # its report is in the shared store all the same
        assert Path(job.gate["report"]).parent == tmp_path / "shared" / "gates"
        after = store.transact(lambda d: None)  # a read with the version history
        assert after["generation"] == 2 and sorted(after["versions"]["gamma"]) == ["v1"]
        assert after["tasks"]["gamma"]["gate"] == verdict

    asyncio.run(scenario())


async def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
