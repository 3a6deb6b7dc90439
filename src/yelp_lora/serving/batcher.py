"""Dynamic micro-batching: concurrent requests gathered into bounded batches run by one worker thread.

The worker takes the first waiting request, gathers whatever else is waiting by then (and, with
`max_wait_s` > 0, whatever arrives within that time), up to `max_batch` texts, runs them as one
batch and hands each request its own results. Under load, requests pile up while the model runs,
so it sees full batches, as in offline prediction; alone, a request runs at once.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass

from yelp_lora.inference.predictor import Predictor
from yelp_lora.serving.telemetry import ServiceMetrics


class ServiceClosed(RuntimeError):
    """The service is shutting down and takes no new work."""


@dataclass
class _Job:
    texts: list[str]
    future: concurrent.futures.Future


class MicroBatcher:
    """Gathers concurrent requests into bounded batches run by one worker thread."""

    def __init__(self, predictor: Predictor, *, max_batch: int, max_wait_s: float, metrics: ServiceMetrics):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="yelp-lora-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, texts: list[str]) -> concurrent.futures.Future:
        job = _Job(texts, concurrent.futures.Future())
        with self._lock:  # no job may slip in behind the stop sentinel
            if self._closed:
                raise ServiceClosed("the service is shutting down")
            self._queue.put(job)
        return job.future

    def stop(self, timeout: float | None = None) -> None:
        """Finish every job already submitted, then end the worker."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        carried: _Job | None = None
        while True:
            job = carried or self._queue.get()
            carried = None
            if job is None:
                return
            batch, size, stopping = [job], len(job.texts), False
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    waiting = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
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
            self._process(batch, size)
            if stopping:
                return

    def _process(self, batch: list[_Job], size: int) -> None:
        self.metrics.batch_texts.observe(size)
        self.metrics.batch_requests.observe(len(batch))
        started = time.perf_counter()
        try:
            predictions = self.predictor.predict([text for job in batch for text in job.texts])
        except Exception as err:  # never let the worker die; one bad request must not fail its batch-mates
            if len(batch) > 1:
                for job in batch:
                    self._process([job], len(job.texts))
            else:
                batch[0].future.set_exception(err)
            return
        finally:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.texts.inc(size)
        start = 0
        for job in batch:
            job.future.set_result(predictions[start : start + len(job.texts)])
            start += len(job.texts)
