"""Dynamic micro-batching: concurrent requests gathered into bounded batches run by worker threads.

A worker takes the first waiting request, gathers whatever else is waiting by then (and, with
`max_wait_s` > 0, whatever arrives within that time), up to `max_batch` texts, runs them as one
batch and hands each request its own results. Under load, requests pile up while the model runs,
so it sees full batches, as in offline prediction; alone, a request runs at once. A predictor whose
model runs several callers side by side (ONNX Runtime: one one-thread session per core) gets one
worker each: no core waits for the other's last review, or for the next batch's tokenising, at
every batch (docs/performance.md); any other predictor gets one worker.

The work it holds is bounded: at most `max_queue` texts wait (beyond that `submit` refuses at once
with ServiceBusy), and a request not started within `timeout_s` is dropped, answered with
DeadlineExceeded, never run for a client that is gone; nor is one whose client cancelled it. A
worker never dies of an exception: each is logged and counted, and the loop goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from yelp_lora.inference.predictor import Predictor
from yelp_lora.serving.telemetry import ServiceMetrics

log = logging.getLogger("yelp_lora.serving")


class ServiceClosed(RuntimeError):
    """The service is shutting down, or its worker has stopped: it takes no new work."""


class ServiceBusy(RuntimeError):
    """The queue holds as many texts as it may: try again shortly."""


class DeadlineExceeded(TimeoutError):
    """The request waited past its deadline without being started, so it was not run."""


@dataclass
class _Job:
    texts: list[str]
    deadline: float  # time.monotonic() by which the worker must have started it
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class _JobQueue:
    """First in, first out, like queue.Queue, but a lone request goes to the worker that ran the
    previous one: the worker that went idle last is woken first, and one that is answering its
    batch's requests (`returning`) gets the next job rather than another worker being woken for it.
    Woken in turn (queue.Queue's order), two workers served one client 6% slower than the single
    worker before them: ONNX Runtime's all-cores session runs slower called from alternating threads
    (docs/performance.md)."""

    def __init__(self):
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._idle: list[threading.Lock] = []  # one held lock per waiting worker, the latest last
        self._returning = 0  # workers that announced they will call get(returning=True) next

    def put(self, item) -> None:
        with self._lock:
            self._items.append(item)
            if self._idle and len(self._items) > self._returning:
                self._idle.pop().release()

    def returning(self) -> None:
        """The caller will call get(returning=True) next, and take the next item itself."""
        with self._lock:
            self._returning += 1

    def get(self, timeout: float | None = None, returning: bool = False):
        """The first item; queue.Empty if none came within `timeout` seconds (None: wait for one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if returning:
                    self._returning, returning = self._returning - 1, False
                if self._items:
                    return self._items.popleft()
                if deadline is not None and time.monotonic() >= deadline:
                    raise queue.Empty
                waiter = threading.Lock()
                waiter.acquire()
                self._idle.append(waiter)
            if not waiter.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
                with self._lock:
                    if waiter in self._idle:  # else a put woke it as it timed out: look again
                        self._idle.remove(waiter)


class MicroBatcher:
    """Gathers concurrent requests into bounded batches run by `predictor.concurrent_workers` threads."""

    def __init__(
        self, predictor: Predictor, *, max_batch: int, max_wait_s: float, max_queue: int, timeout_s: float,
        metrics: ServiceMetrics,
    ):
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.predictor = predictor
        self._running = 0  # batches being run
        self._queue = _JobQueue()  # of _Job, and one None per worker to stop it
        self._queued_texts = 0
        self._closed = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(predictor.concurrent(),), name=f"yelp-lora-model-{index}", daemon=True)
            for index in range(predictor.concurrent_workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def running(self) -> bool:
        return self.worker_alive and not self._closed

    @property
    def full(self) -> bool:
        return self._queued_texts >= self.max_queue

    @property
    def worker_alive(self) -> bool:
        """False once every worker thread has ended; while shutting down they still finish their jobs."""
        return any(thread.is_alive() for thread in self._threads)

    def submit(self, texts: list[str]) -> concurrent.futures.Future:
        """Queue a request; ServiceBusy when the queue is full, ServiceClosed when no worker will run it."""
        job = _Job(texts, time.monotonic() + self.timeout_s)
        with self._lock:  # no job may slip in behind the stop sentinel
            if self._closed or not self.worker_alive:
                raise ServiceClosed("the service is shutting down" if self._closed else "the model worker has stopped")
            if self._queued_texts + len(texts) > self.max_queue:
                self.metrics.dropped.labels("queue_full").inc()
                raise ServiceBusy(f"{self._queued_texts} texts are already waiting for the model (limit {self.max_queue})")
            self._queued_texts += len(texts)
            self.metrics.queued_texts.set(self._queued_texts)
            self._queue.put(job)
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Finish every job already submitted, then end the workers."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:  # one stop sentinel each, behind every job already queued
                    self._queue.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _take(self, timeout: float | None = None, returning: bool = False) -> _Job | None:
        """The next job to run (or the stop sentinel), skipping those cancelled or past their deadline."""
        while True:
            job = self._queue.get(timeout, returning)
            returning = False
            if job is None:
                return None
            with self._lock:
                self._queued_texts -= len(job.texts)
                self.metrics.queued_texts.set(self._queued_texts)
            if job.future.cancelled():
                self.metrics.dropped.labels("abandoned").inc()
            elif time.monotonic() > job.deadline:
                self.metrics.dropped.labels("expired").inc()
                job.future.set_exception(DeadlineExceeded(f"not started within {self.timeout_s:g} s"))
            elif job.future.set_running_or_notify_cancel():  # from here on it cannot be cancelled
                return job
            else:
                self.metrics.dropped.labels("abandoned").inc()

    def _run(self, predictor: Predictor) -> None:
        carried: _Job | None = None
        returning = False  # announced to the queue: this worker takes the next job itself
        while True:
            batch: list[_Job] = []
            try:
                job = carried or self._take(returning=returning)
                carried, returning = None, False
                if job is None:
                    return
                batch, size, stopping = [job], len(job.texts), False
                deadline = time.monotonic() + self.max_wait_s
                while size < self.max_batch:
                    # Past the wait, each of several workers takes only its share of what waits: one
                    # taking it all would leave the others idle while it runs the batch on its one core.
                    share = -(-(size + self._queued_texts) // len(self._threads))
                    if size >= share and time.monotonic() >= deadline:
                        break
                    try:
                        waiting = self._take(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if waiting is None:
                        stopping = True
                        break
                    if size + len(waiting.texts) > self.max_batch:
                        carried = waiting  # it opens the next batch
                        break
                    batch.append(waiting)
                    size += len(waiting.texts)
                outcomes = self._process(predictor, batch, size)
                # Announced before the answers go out: the client's next request may arrive before
                # this worker is back at the queue, and should find it rather than wake another.
                returning = carried is None and not stopping
                if returning:
                    self._queue.returning()
                for future, outcome in outcomes:
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                if stopping:
                    return
            except Exception as err:  # the worker outlives anything, and answers every job it held
                self.metrics.worker_errors.inc()
                log.exception("model worker: unexpected error, carrying on")
                for held in batch:
                    if not held.future.done():
                        held.future.set_exception(err)

    def _process(self, own: Predictor, batch: list[_Job], size: int) -> list[tuple[concurrent.futures.Future, list | Exception]]:
        """Each job's future and outcome (its predictions, or the error that failed it alone), from
        the worker's `own` predictor or, when nothing else runs or waits, from every core."""
        self.metrics.batch_texts.observe(size)
        self.metrics.batch_requests.observe(len(batch))
        with self._lock:
            # Alone, a batch takes every core (ONNX Runtime's all-cores session: one client was served
            # at 139-145 req/s, against 103-106 on one core); under load each worker keeps to its own.
            predictor = self.predictor if self._running == 0 and self._queued_texts == 0 else own
            self._running += 1
        started = time.perf_counter()
        try:
            predictions = predictor.predict([text for job in batch for text in job.texts])
        except Exception as err:  # one bad request must not fail its batch-mates
            if len(batch) > 1:
                return [outcome for job in batch for outcome in self._process(own, [job], len(job.texts))]
            return [(batch[0].future, err)]
        finally:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            with self._lock:
                self._running -= 1
        self.metrics.texts.inc(size)
        outcomes, start = [], 0
        for job in batch:
            outcomes.append((job.future, predictions[start : start + len(job.texts)]))
            start += len(job.texts)
        return outcomes
