"""Dynamic batching: the rows of concurrent requests predicted as one table.

Encoders and the head cost much less per row in a batch than one row at a time, so one
worker thread predicts the requests waiting for it together, with the model current at that
moment (the server's ModelSlot: a new version starts with the next batch, while a batch under
way finishes with the model it began with).

How long a batch waits is decided by what the server knows, not by a fixed timer. A request
announces itself when it starts (`arriving()`: its body is read, its rows validated and its
files staged, some milliseconds) and joins the queue when ready. The worker takes the queue
and waits, up to `wait_s` after taking the first request (default 50 ms) and while fewer than
`max_rows` rows are there, for
- requests still arriving: they are a few milliseconds away;
- as many requests as the previous batch answered: clients that post again once answered
  (eight clients in a loop) come back together, a few milliseconds after the batch ends.
  Without this, eight such clients split into two groups whose batches alternate (2 and 6
  requests), each arriving while the other's batch runs.
A request alone is not delayed: its batch starts as soon as it is ready, unless the previous
batch held more requests (then, once, by at most `wait_s`). A fixed 5 ms wait, before this,
caught one or two of eight clients' rows.

A batch that fails is predicted again request by request, so a request's bad row is its own
error, not its neighbours'.

The worker is the only thread that runs the model: loading a version too (`on_worker`, and
the registry's pointer is checked once a second while idle, so a promoted version is loaded
here before the next request needs it). torch's CPU kernels run on OpenMP, and once a second
thread has run a parallel region of its own, the two thread teams share the cores badly: on
2 cores the image encoder's one-row forward took 26 ms on a thread after the model was
loaded on another, against 9 ms when one thread did both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pandas as pd

from tasks.errors import FuselineError
from tasks.serve.predict import Roots
from tasks.serve.served import ServedModel

log = logging.getLogger(__name__)

Prediction = tuple[pd.DataFrame, ServedModel]  # fuseline predict's table for the rows, and who predicted
DEFAULT_WAIT_S = 0.05
IDLE_CHECK_S = 1.0  # how often an idle worker asks for the current model (a promotion loads then)
T = TypeVar("T")


@dataclass
class _Job:
    frame: pd.DataFrame
    future: Future[Prediction] = field(default_factory=Future)


class Batcher:
    """Predicts submitted tables in batches on one worker thread (see the module docstring)."""

    def __init__(
        self,
        current: Callable[[], ServedModel],
        roots: Roots,
        wait_s: float = DEFAULT_WAIT_S,
        max_rows: int = 256,
    ) -> None:
        self.current = current
        self.roots = roots
        self.wait_s = wait_s
        self.max_rows = max_rows
        self.batches = 0  # batches predicted so far (with `requests`: how much batching happened)
        self.requests = 0
        self._ready: deque[_Job] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._arriving = 0  # requests announced, not yet submitted (or failed)
        self._answered = 0  # requests in the last batch: those likely to post again soon
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="predict-batches", daemon=True)
        self._thread.start()

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's reading, validation and `submit`: batches started meanwhile wait for it."""
        with self._changed:
            self._arriving += 1
        try:
            yield
        finally:
            with self._changed:
                self._arriving -= 1
                self._changed.notify()

    def submit(self, frame: pd.DataFrame) -> Future[Prediction]:
        """The prediction of `frame`'s rows, when its batch is done (an exception if they fail)."""
        job = _Job(frame)
        with self._changed:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._ready.append(job)
            self._changed.notify()
        return job.future

    def on_worker(self, function: Callable[[], T]) -> T:
        """`function()` run on the worker thread between batches (the thread that runs the model)."""
        if threading.current_thread() is self._thread:
            return function()
        future: Future[T] = Future()
        with self._changed:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._calls.append((function, future))
            self._changed.notify()
        return future.result()

    def close(self) -> None:
        """Predict what is queued, then stop the worker."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            calls, jobs = self._gather()
            for function, future in calls:
                _run_call(function, future)
            if jobs:
                self._predict(jobs)
            elif not calls:
                if self._closed:
                    return
                self._refresh()

    def _refresh(self) -> None:
        """Idle: ask for the current model, so a newly promoted version loads here, now."""
        try:
            self.current()
        except Exception:  # noqa: BLE001 - the next batch meets the same problem and answers it
            log.exception("checking for a newly promoted version failed")

    def _gather(self) -> tuple[list[tuple[Callable[[], Any], Future[Any]]], list[_Job]]:
        """Calls waiting for the worker, else the next batch: the first ready job and those ready
        or arriving within the wait. Both empty when closed, or idle for IDLE_CHECK_S."""
        with self._changed:
            if not self._ready and not self._calls and not self._closed:
                self._changed.wait(IDLE_CHECK_S)
            if self._calls:
                calls = list(self._calls)
                self._calls.clear()
                return calls, []
            if not self._ready:
                return [], []
            jobs = [self._ready.popleft()]
            rows = len(jobs[0].frame)
            deadline = time.monotonic() + self.wait_s
            while rows < self.max_rows:
                if self._ready:
                    jobs.append(self._ready.popleft())
                    rows += len(jobs[-1].frame)
                    continue
                remaining = deadline - time.monotonic()
                expected = self._arriving > 0 or len(jobs) < self._answered
                if not expected or self._closed or self._calls or remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._answered = len(jobs)
            return [], jobs

    def _predict(self, jobs: list[_Job]) -> None:
        """Answer every job of the batch, whatever happens: the worker thread must not die."""
        self.batches += 1
        self.requests += len(jobs)
        try:
            model = self.current()
            outcomes = predict_batch(model, [job.frame for job in jobs], self.roots)
        except Exception as err:  # noqa: BLE001 - e.g. the model's files vanished: every job learns it
            log.exception("batch prediction failed")
            outcomes = [err] * len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result((outcome, model))


def _run_call(function: Callable[[], T], future: Future[T]) -> None:
    try:
        future.set_result(function())
    except BaseException as err:  # noqa: BLE001 - the caller's to raise, on its own thread
        future.set_exception(err)


def predict_batch(
    model: ServedModel, frames: list[pd.DataFrame], roots: Roots
) -> list[pd.DataFrame | Exception]:
    """Each frame's rows of `fuseline predict`'s table, predicted in one call; failures per frame.

    Ids are replaced by row numbers for the call (two requests may send the same id) and the
    tables are cut back by length: prediction keeps the rows' order.
    """
    combined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    combined[model.data.id] = [str(n) for n in range(len(combined))]
    try:
        table = model.predict(combined, source="request", roots=roots)
    except Exception as err:  # noqa: BLE001 - one request's failure must not fail the others
        if len(frames) == 1:
            if not isinstance(err, FuselineError):
                log.exception("prediction failed")
            return [err]
        return [outcome for frame in frames for outcome in predict_batch(model, [frame], roots)]
    if len(frames) == 1:
        return [table]
    outcomes: list[pd.DataFrame | Exception] = []
    start = 0
    for frame in frames:
        outcomes.append(table.iloc[start : start + len(frame)].reset_index(drop=True))
        start += len(frame)
    return outcomes
