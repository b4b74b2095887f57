"""The API server's batcher: batches that fill under load, and no wait for a request alone.

Issue 26: eight concurrent clients got 0.47x of `fuseline predict`'s rows per second, their
rows predicted one or two at a time (a fixed 5 ms wait), while each lone request paid the
wait. The batcher (tasks/serve/http_batch.py) now waits only for requests it knows of. The
model here is a stand-in that records what it was asked to predict: what is tested is which
requests share a batch, whatever predicts them (tests/e2e/test_api.py runs the real model).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from tasks.serve.http_batch import Batcher

LONG_WAIT_S = 30.0  # the cap: a test that waits for it fails its own timeout


@dataclass
class RecordingModel:
    """Predicts a table's rows as their `x`, recording each batch's sizes and the thread's state."""

    data: Any = field(default_factory=lambda: SimpleNamespace(id="item_id"))
    batches: list[list[float]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    threads: list[str] = field(default_factory=list)

    def predict(self, frame: pd.DataFrame, source: str, roots: dict) -> pd.DataFrame:
        self.batches.append(frame["x"].tolist())
        self.threads.append(threading.current_thread().name)
        self.release.wait(timeout=10)
        return pd.DataFrame({"item_id": frame["item_id"], "prediction": frame["x"]})


def _frame(*values: float) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [str(v) for v in values], "x": list(values)})


@pytest.fixture()
def model() -> RecordingModel:
    return RecordingModel()


@pytest.fixture()
def batcher(model: RecordingModel) -> Iterator[Batcher]:
    batcher = Batcher(lambda: model, {}, wait_s=LONG_WAIT_S, max_rows=4)  # type: ignore[arg-type, return-value]
    yield batcher
    model.release.set()
    batcher.close()


def test_a_request_alone_is_predicted_at_once(batcher: Batcher, model: RecordingModel) -> None:
    model.release.set()
    started = time.monotonic()
    table, _ = batcher.submit(_frame(1.0)).result(timeout=10)
    assert time.monotonic() - started < 5  # not the 30 s cap
    assert table["prediction"].tolist() == [1.0] and model.batches == [[1.0]]


def test_requests_still_arriving_join_the_batch(batcher: Batcher, model: RecordingModel) -> None:
    """Three requests announce themselves; the batch waits for the two still validating."""
    model.release.set()
    arrivals = [batcher.arriving() for _ in range(3)]
    for arrival in arrivals:
        arrival.__enter__()
    futures = [batcher.submit(_frame(1.0))]
    time.sleep(0.2)  # the worker has the first request and waits for the others
    for value, arrival in zip([2.0, 3.0], arrivals[1:], strict=True):
        futures.append(batcher.submit(_frame(value)))
        arrival.__exit__(None, None, None)
    arrivals[0].__exit__(None, None, None)
    answers = [future.result(timeout=10)[0]["prediction"].tolist() for future in futures]
    assert answers == [[1.0], [2.0], [3.0]] and model.batches == [[1.0, 2.0, 3.0]]


def test_a_request_that_fails_validation_does_not_hold_the_batch(
    batcher: Batcher, model: RecordingModel
) -> None:
    model.release.set()
    refused = batcher.arriving()
    refused.__enter__()
    future = batcher.submit(_frame(1.0))
    time.sleep(0.2)
    refusal = ValueError("rows[0].price: not a number")  # a 4xx: it leaves without joining the queue
    assert refused.__exit__(ValueError, refusal, None) is False  # raised on to the route
    started = time.monotonic()
    assert future.result(timeout=10)[0]["prediction"].tolist() == [1.0]
    assert time.monotonic() - started < 5


def test_a_batch_stops_at_the_row_budget(model: RecordingModel) -> None:
    """Four rows at most (max_rows): requests ready meanwhile wait for the next batch."""
    batcher = Batcher(lambda: model, {}, wait_s=0.1, max_rows=4)  # type: ignore[arg-type, return-value]
    try:
        first = batcher.submit(_frame(0.0))  # held in predict until released
        time.sleep(0.2)
        futures = [batcher.submit(_frame(1.0, 2.0)), batcher.submit(_frame(3.0, 4.0))]
        futures.append(batcher.submit(_frame(5.0)))
        model.release.set()
        for future in [first, *futures]:
            future.result(timeout=10)
    finally:
        model.release.set()
        batcher.close()
    assert model.batches == [[0.0], [1.0, 2.0, 3.0, 4.0], [5.0]]


def test_clients_answered_together_are_waited_for_together(batcher: Batcher, model: RecordingModel) -> None:
    """After a batch of three, the first of their next requests waits for the other two (clients
    in a loop), where batches would otherwise alternate between whoever happened to be ready."""
    model.release.set()
    arrivals = [batcher.arriving() for _ in range(3)]
    for arrival in arrivals:
        arrival.__enter__()
    futures = [batcher.submit(_frame(float(n))) for n in range(3)]
    for arrival in arrivals:
        arrival.__exit__(None, None, None)
    for future in futures:
        future.result(timeout=10)
    again = [batcher.submit(_frame(10.0))]
    time.sleep(0.2)
    again += [batcher.submit(_frame(11.0)), batcher.submit(_frame(12.0))]
    for future in again:
        future.result(timeout=10)
    assert model.batches == [[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]]


def test_a_call_runs_on_the_thread_that_predicts(batcher: Batcher, model: RecordingModel) -> None:
    """Loading a version goes through `on_worker`: torch's thread teams stay on one thread (a
    forward on a second thread ran 2-3x slower on 2 cores), and the call waits for the batch."""
    model.release.set()
    batcher.submit(_frame(1.0)).result(timeout=10)
    called_on = batcher.on_worker(lambda: threading.current_thread().name)
    assert called_on == model.threads[0] == "predict-batches"
    assert called_on != threading.current_thread().name
    with pytest.raises(KeyError, match="raised on the worker"):
        batcher.on_worker(lambda: {}["raised on the worker"])
    assert batcher.submit(_frame(2.0)).result(timeout=10)[0]["prediction"].tolist() == [2.0]


def test_a_call_waits_for_the_batch_under_way(batcher: Batcher, model: RecordingModel) -> None:
    running = batcher.submit(_frame(1.0))
    time.sleep(0.2)  # the worker is in predict, held until released
    order: list[str] = []
    caller = threading.Thread(target=lambda: order.append(batcher.on_worker(lambda: "call")))
    caller.start()
    time.sleep(0.2)
    assert order == []  # not while the batch runs
    model.release.set()
    running.result(timeout=10)
    caller.join(timeout=10)
    assert order == ["call"]


def test_an_idle_worker_asks_for_the_current_model() -> None:
    """A promoted version is loaded by the worker while idle, not by the next request."""
    asked: list[str] = []
    model = RecordingModel()

    def current() -> RecordingModel:
        asked.append(threading.current_thread().name)
        return model

    batcher = Batcher(current, {}, wait_s=0.05, max_rows=4)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 10
        while not asked and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        batcher.close()
    assert asked and set(asked) == {"predict-batches"}
