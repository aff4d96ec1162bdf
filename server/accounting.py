"""Per-request safety accounting, off the hot path.

The middleware calls :meth:`JudgeQueue.submit` once a response is complete (streams included). ``submit`` never
blocks: a full queue drops the item and counts it (``safegene_judge_queue_dropped_total``), so a slow judge can
never slow serving down nor grow memory. One worker thread drains the queue in small batches, runs every judge and
turns verdicts into the ``safegene_*`` safety counters.

How verdicts become metrics (judges are told apart by the labels they return, contract 4):

* prompt-harm judge ("harmful"/"benign") gives ``prompt_class``; without it the class is ``unknown``;
* refusal judge ("refusal"/"compliance") → ``refusals_total{prompt_class}``; a refused benign prompt is an
  over-refusal; a harmful prompt answered without refusal counts as a harmful response for ``judge="keyword"``;
* an LLM judge ("unsafe"/"safe") → ``harmful_responses_total{judge="llm"}`` on "unsafe".
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import metrics as M

log = logging.getLogger("safegene.server.accounting")


@dataclass(frozen=True)
class JudgeItem:
    labels: tuple[str, str, str]  # (model, variant, task)
    prompt: str
    response: str


def record_verdicts(item: JudgeItem, verdicts: list[Any]) -> dict[str, Any]:
    """Update the safety counters for one judged item; returns what was concluded (for logs and tests)."""
    model, variant, task = item.labels
    lab = {"model": model, "variant": variant, "task": task}
    by_label = {v.label: v for v in verdicts}
    prompt_class = "unknown"
    if "harmful" in by_label:
        prompt_class = "harmful"
    elif "benign" in by_label:
        prompt_class = "benign"
    refused = None
    if "refusal" in by_label:
        refused = True
    elif "compliance" in by_label:
        refused = False
    M.JUDGED.labels(**lab, prompt_class=prompt_class).inc()
    if prompt_class == "harmful":
        M.PROMPTS_HARMFUL.labels(**lab).inc()
    if refused:
        M.REFUSALS.labels(**lab, prompt_class=prompt_class).inc()
        if prompt_class == "benign":
            M.OVER_REFUSALS.labels(**lab).inc()
    if refused is False and prompt_class == "harmful":
        M.HARMFUL.labels(**lab, judge="keyword").inc()
    if "unsafe" in by_label:
        M.HARMFUL.labels(**lab, judge="llm").inc()
    return {"prompt_class": prompt_class, "refused": refused, "llm_unsafe": "unsafe" in by_label}


class JudgeQueue:
    """Bounded queue + one daemon worker thread that runs the judges in batches."""

    def __init__(self, judges_factory: Callable[[], list[Any]], *, maxsize: int = 256, batch_size: int = 16):
        self._factory = judges_factory
        self._q: queue.Queue[JudgeItem | None] = queue.Queue(maxsize=maxsize)
        self._batch_size = batch_size
        self._thread: threading.Thread | None = None
        self._judges: list[Any] | None = None
        self.ready = threading.Event()
        self.processed = 0
        self.dropped = 0
        self.error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="safegene-judges", daemon=True)
        self._thread.start()

    def submit(self, item: JudgeItem) -> bool:
        """Enqueue without blocking; False (and counted) when the queue is full."""
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            M.QUEUE_DROPPED.inc()
            return False
        M.QUEUE_DEPTH.set(self._q.qsize())
        return True

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._q.put(None, timeout=timeout)  # sentinel; waits only for room, never for judging
        except queue.Full:
            pass
        self._thread.join(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far has been judged (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._q.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        try:
            self._judges = list(self._factory())
        except Exception as e:  # judges that cannot load must not take the server down; accounting stops
            self.error = f"judges failed to load: {e}"
            log.error("%s; safety accounting is off (items will be dropped)", self.error)
            self._judges = []
        self.ready.set()
        while True:
            first = self._q.get()
            batch = [first]
            while first is not None and len(batch) < self._batch_size:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            items = [b for b in batch if b is not None]
            if items:
                self._judge(items)
            for _ in batch:
                self._q.task_done()
            M.QUEUE_DEPTH.set(self._q.qsize())
            if any(b is None for b in batch):
                return

    def _judge(self, items: list[JudgeItem]) -> None:
        prompts = [i.prompt for i in items]
        responses = [i.response for i in items]
        per_item: list[list[Any]] = [[] for _ in items]
        for judge in self._judges or []:
            name = getattr(judge, "name", type(judge).__name__)
            t0 = time.perf_counter()
            try:
                verdicts = judge.judge_batch(prompts, responses)
            except Exception as e:  # one failing judge (e.g. an unreachable LLM judge) must not stop the others
                log.warning("judge %s failed on a batch of %d: %s", name, len(items), e)
                continue
            finally:
                M.JUDGE_LATENCY.labels(judge=name).observe(time.perf_counter() - t0)
            for acc, v in zip(per_item, verdicts):
                acc.append(v)
        for item, verdicts in zip(items, per_item):
            if verdicts:
                record_verdicts(item, verdicts)
        self.processed += len(items)
