"""Per-request safety accounting, off the hot path and off the serving process.

The middleware calls :meth:`JudgeQueue.submit` once a response is complete (streams included). ``submit`` never
blocks: a full queue drops the item and counts it (``safegene_judge_queue_dropped_total``), so a slow judge can
never slow serving down nor grow memory. The judges run in a **child process** (:func:`judge_worker`): it drains the
queue in small batches, with one torch thread at a lower scheduling priority, so judging takes neither the API
process's GIL nor the engine's core when the engine needs it (docs/benchmarks.md). Verdicts come back to a reader
thread here, which turns them into the ``safegene_*`` safety counters (the metrics live in this process).

How verdicts become metrics (judges are told apart by the labels they return, contract 4):

* prompt-harm judge ("harmful"/"benign") gives ``prompt_class``; without it the class is ``unknown``;
* refusal judge ("refusal"/"compliance") → ``refusals_total{prompt_class}``; a refused benign prompt is an
  over-refusal; a harmful prompt answered without refusal counts as a harmful response for ``judge="keyword"``;
* an LLM judge ("unsafe"/"safe") → ``harmful_responses_total{judge="llm"}`` on "unsafe";
* the response-harm judge ("harmful_help"/"no_harmful_help") → ``harmful_responses_total{judge="response"}`` on
  "harmful_help" (it reads the prompt itself, so it needs no prompt class).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from . import metrics as M

log = logging.getLogger("safegene.server.accounting")


@dataclass(frozen=True)
class JudgeItem:
    labels: tuple[str, str, str]  # (model, variant, task)
    prompt: str
    response: str
    prompt_ids: tuple[int, ...] | None = None  # a token-id prompt: decoded in the judge process (``prompt`` is "")


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
    if "harmful_help" in by_label:
        M.HARMFUL.labels(**lab, judge="response").inc()
    return {"prompt_class": prompt_class, "refused": refused, "llm_unsafe": "unsafe" in by_label,
            "response_harmful": "harmful_help" in by_label}


#: a picklable callable that builds the judges in the child process (a module-level function or a partial)
JudgeFactory = Callable[[], Sequence[Any]]
#: how much lower the judge process's scheduling priority is than the server's (os.nice)
JUDGE_NICE = 10


@dataclass(frozen=True)
class VerdictLite:
    """A verdict as it crosses the process boundary: what :func:`record_verdicts` reads."""

    judge: str
    label: str
    score: float


def judge_worker(factory: JudgeFactory, inbox: Any, outbox: Any, batch_size: int, nice: int,
                 tokenizer: str | None = None) -> None:
    """The child process: build the judges once, then judge batches until the ``None`` sentinel arrives.

    Messages out: ``("ready", None)`` or ``("error", text)`` once, then ``("done", [(item, [VerdictLite])],
    {judge: seconds}, [failed judge names])`` per batch. ``tokenizer``: the served model's folder, to decode
    token-id prompts (loaded on the first one)."""
    try:
        os.nice(nice)
    except OSError:  # pragma: no cover - not allowed here: keep the inherited priority
        pass
    try:
        import torch  # lazy: only judges that run a model need torch; one thread leaves the other cores to serving

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        judges = list(factory())
        outbox.put(("ready", None))
    except Exception as e:  # judges that cannot load must not take the server down; accounting stops
        judges = []
        outbox.put(("error", f"judges failed to load: {e}"))
    while True:
        first = inbox.get()
        batch = [first]
        while first is not None and len(batch) < batch_size:
            try:
                batch.append(inbox.get_nowait())
            except queue.Empty:
                break
        items = [b for b in batch if b is not None]
        if items:
            outbox.put(("done", *_judge(judges, [_with_text(i, tokenizer) for i in items])))
        if any(b is None for b in batch):
            return


_TOKENIZERS: dict[str, Any] = {}


def _with_text(item: JudgeItem, tokenizer: str | None) -> JudgeItem:
    """A token-id prompt decoded to text (the judges read text); left as it is without a tokenizer."""
    if item.prompt_ids is None or tokenizer is None:
        return item
    if tokenizer not in _TOKENIZERS:
        from transformers import AutoTokenizer  # lazy: only token-id prompts need the tokenizer

        _TOKENIZERS[tokenizer] = AutoTokenizer.from_pretrained(tokenizer)
    text = _TOKENIZERS[tokenizer].decode(list(item.prompt_ids), skip_special_tokens=True)
    return JudgeItem(item.labels, text, item.response, item.prompt_ids)


def _judge(judges: list[Any], items: list[JudgeItem]) -> tuple[list[tuple[JudgeItem, list[VerdictLite]]],
                                                                dict[str, float], list[str]]:
    prompts = [i.prompt for i in items]
    responses = [i.response for i in items]
    per_item: list[list[VerdictLite]] = [[] for _ in items]
    seconds: dict[str, float] = {}
    failed: list[str] = []
    for judge in judges:
        name = getattr(judge, "name", type(judge).__name__)
        t0 = time.perf_counter()
        try:
            verdicts = judge.judge_batch(prompts, responses)
        except Exception as e:  # one failing judge (e.g. an unreachable LLM judge) must not stop the others
            log.warning("judge %s failed on a batch of %d: %s", name, len(items), e)
            failed.append(name)
            continue
        finally:
            seconds[name] = time.perf_counter() - t0
        for acc, v in zip(per_item, verdicts):
            acc.append(VerdictLite(v.judge, v.label, float(v.score)))
    return list(zip(items, per_item)), seconds, failed


class JudgeQueue:
    """Bounded queue into a judge process; a reader thread turns its verdicts into metrics."""

    def __init__(self, factory: JudgeFactory, *, maxsize: int = 256, batch_size: int = 16, nice: int = JUDGE_NICE,
                 tokenizer: str | None = None):
        ctx = mp.get_context("spawn")  # never fork a process that holds an event loop and engine clients
        self._ctx = ctx
        self._factory = factory
        self._inbox = ctx.Queue(maxsize=maxsize)
        self._outbox = ctx.Queue()
        self._batch_size = batch_size
        self._nice = nice
        self._tokenizer = tokenizer
        self._proc: Any = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.submitted = 0
        self.processed = 0
        self.dropped = 0
        self.error: str | None = None

    def start(self) -> None:
        M.JUDGES_READY.set(0)
        self._proc = self._ctx.Process(target=judge_worker, name="safegene-judges", daemon=True,
                                       args=(self._factory, self._inbox, self._outbox, self._batch_size, self._nice,
                                             self._tokenizer))
        self._proc.start()
        self._reader = threading.Thread(target=self._read, name="safegene-judge-results", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        """The judge process's id (None before start)."""
        return self._proc.pid if self._proc is not None else None

    def submit(self, item: JudgeItem) -> bool:
        """Enqueue without blocking; False (and counted) when the queue is full."""
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            M.QUEUE_DROPPED.inc()
            return False
        with self._lock:
            self.submitted += 1
        self._set_depth()
        return True

    def _set_depth(self) -> None:
        try:
            M.QUEUE_DEPTH.set(self._inbox.qsize())  # waiting, not counting the batch being judged
        except NotImplementedError:  # pragma: no cover - platforms without sem_getvalue (macOS)
            M.QUEUE_DEPTH.set(self.submitted - self.processed)

    def stop(self, timeout: float = 5.0) -> None:
        if self._proc is None:
            return
        try:
            self._inbox.put(None, timeout=timeout)  # sentinel; waits only for room, never for judging
        except queue.Full:
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout)
        self._outbox.put(None)  # ends the reader
        if self._reader is not None:
            self._reader.join(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far has been judged (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.processed >= self.submitted:
                    return True
            time.sleep(0.02)
        return False

    def _read(self) -> None:
        while True:
            msg = self._outbox.get()
            if msg is None:
                return
            kind, payload = msg[0], msg[1]
            if kind == "error":
                self.error = payload
                log.error("%s; safety accounting is off (items will be dropped)", payload)
                M.JUDGES_READY.set(0)
                self.ready.set()
            elif kind == "ready":
                M.JUDGES_READY.set(1)
                self.ready.set()
            else:
                for name, seconds in msg[2].items():
                    M.JUDGE_LATENCY.labels(judge=name).observe(seconds)
                for name in msg[3]:
                    M.JUDGE_ERRORS.labels(judge=name).inc()
                for item, verdicts in payload:
                    if verdicts:
                        record_verdicts(item, verdicts)
                with self._lock:
                    self.processed += len(payload)
                self._set_depth()
