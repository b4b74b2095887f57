"""Dynamic batching: the rows of concurrent requests predicted as one table.

Encoders and the head cost much less per row in a batch than one row at a time, so a
worker thread takes the first waiting request, gathers whatever else arrives within a short
wait (default 5 ms) up to a row budget, and predicts them together with the model current
at that moment (the server's ModelSlot: a new version starts with the next batch, while a
batch under way finishes with the model it began with). A batch that fails is predicted
again request by request, so a request's bad row is its own error, not its neighbours'.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import pandas as pd

from tasks.errors import FuselineError
from tasks.serve.predict import Roots
from tasks.serve.served import ServedModel

log = logging.getLogger(__name__)

Prediction = tuple[pd.DataFrame, ServedModel]  # fuseline predict's table for the rows, and who predicted


@dataclass
class _Job:
    frame: pd.DataFrame
    future: Future[Prediction] = field(default_factory=Future)


class Batcher:
    """Predicts submitted tables in batches on one worker thread (see the module docstring)."""

    def __init__(
        self, current: Callable[[], ServedModel], roots: Roots, wait_s: float = 0.005, max_rows: int = 256
    ) -> None:
        self.current = current
        self.roots = roots
        self.wait_s = wait_s
        self.max_rows = max_rows
        self.batches = 0  # batches predicted so far (with `requests`: how much batching happened)
        self.requests = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="predict-batches", daemon=True)
        self._thread.start()

    def submit(self, frame: pd.DataFrame) -> Future[Prediction]:
        """The prediction of `frame`'s rows, when its batch is done (an exception if they fail)."""
        job = _Job(frame)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            self._predict(jobs)
            if stop:
                return

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

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and whatever else arrives within the wait, up to the row budget."""
        jobs, rows = [first], len(first.frame)
        deadline = time.perf_counter() + self.wait_s
        while rows < self.max_rows:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            rows += len(job.frame)
        return jobs, False


def predict_batch(
    model: ServedModel, frames: list[pd.DataFrame], roots: Roots
) -> list[pd.DataFrame | Exception]:
    """Each frame's rows of `fuseline predict`'s table, predicted in one call; failures per frame.

    Ids are replaced by row numbers for the call (two requests may send the same id) and the
    tables are cut back by length: prediction keeps the rows' order.
    """
    combined = pd.concat(frames, ignore_index=True)
    combined[model.data.id] = [str(n) for n in range(len(combined))]
    try:
        table = model.predict(combined, source="request", roots=roots)
    except Exception as err:  # noqa: BLE001 - one request's failure must not fail the others
        if len(frames) == 1:
            if not isinstance(err, FuselineError):
                log.exception("prediction failed")
            return [err]
        return [outcome for frame in frames for outcome in predict_batch(model, [frame], roots)]
    outcomes: list[pd.DataFrame | Exception] = []
    start = 0
    for frame in frames:
        outcomes.append(table.iloc[start : start + len(frame)].reset_index(drop=True))
        start += len(frame)
    return outcomes
