"""Benchmark `fuseline api`: single-row latency against the bare forward, throughput against batch.

    python bench/api.py --project PATH [--latency-requests 50] [--throughput-rows 256] [--threads N] [--json]

PATH is a reproduced project (after `make demo` or `dvc repro`): its models/, data/demo/
and params.yaml. The server runs as `fuseline api` in a subprocess on a free port; this
process is its clients. Every row sent has texts and an image never seen before (a unique
suffix, one pixel changed), so each request really encodes, as a new row in production
would, rather than reading the feature cache.

- latency: one client, one row per request, sequentially, for a text + tabular row (no
  photo, no clip) and a row with an image (base64); p50 and p99 of the wall time at the
  client. Against it, each request followed by one (interleaved, so other processes' load
  weighs on both alike): the bare forward of such a row in this process with the served
  encoders (its text cells, its image) plus the served model's head on the row's features
  (`bare_p50_ms`).
- throughput: 8 client threads posting one row each, all rows with images, against
  `fuseline predict`'s Predictor on the same rows as one table, into a fresh cache
  (`ServedModel.predict`, the flow's code without Prefect). Rows per second for both.

Numbers from a shared CPU vary from run to run; compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _variant(image_path: Path, number: int) -> bytes:
    """The image with one pixel changed: new bytes, so a cache miss, the same work to encode."""
    from PIL import Image

    with Image.open(image_path) as image:
        rgb = image.convert("RGB")
    rgb.putpixel((0, 0), (number % 256, (number // 256) % 256, 7))
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


def _rows(raw: pd.DataFrame, count: int, tag: str, images: Path | None) -> list[dict[str, Any]]:
    """`count` rows made unique by their texts (and image when `images` is given); clip empty."""
    rows = []
    for number in range(count):
        record = raw.iloc[number % len(raw)].to_dict()
        record["title"] = f"{record['title']} {tag}{number}"
        record["description"] = f"{record['description']} {tag}{number}"
        record["clip"] = None
        record["price"] = float(record["price"]) if record["price"] else None
        if images is None:
            record["photo"] = None
        else:
            record["photo"] = base64.b64encode(_variant(images / record["photo"], number)).decode()
        rows.append(record)
    return rows


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def _start_server(root: Path, port: int, log: Path, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "flows.cli", "api", "--model", "models", "--port", str(port)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))  # torch's intra-op threads, as set here
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    return server


def _wait_up(http: Any, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if http.get("/health").status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not answer within 180 s")


def _latency(http: Any, rows: list[dict[str, Any]], bare: BareForward) -> tuple[list[float], list[float]]:
    """Wall seconds of each one-row request, each followed by one bare forward of the same kind
    of row: interleaved, so load from other processes weighs on both alike."""
    seconds, bare_seconds = [], []
    for row in rows:
        started = time.perf_counter()
        response = http.post("/predict", json={"rows": [row]})
        seconds.append(time.perf_counter() - started)
        response.raise_for_status()
        bare_seconds.append(bare.seconds())
    return seconds, bare_seconds


def _throughput(url: str, rows: list[dict[str, Any]], clients: int) -> float:
    """Rows per second with `clients` clients, each posting its share of the rows one at a time.

    A client is one httpx.Client (one keep-alive connection), made before the clock starts:
    making one costs 40 ms of CPU (its TLS context), which a client per row, as this bench
    first did, spent on the same 2 cores as the server, a third of the server's time per row.
    """
    import httpx

    shares = [rows[start::clients] for start in range(clients)]
    https = [httpx.Client(base_url=url, timeout=120) for _ in shares]

    def post_all(http: httpx.Client, share: list[dict[str, Any]]) -> None:
        for row in share:
            http.post("/predict", json={"rows": [row]}).raise_for_status()

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(post_all, https, shares))
        return len(rows) / (time.perf_counter() - started)
    finally:
        for http in https:
            http.close()


class BareForward:
    """One row's encoder forwards (its text cells, its image) plus the served model's head."""

    def __init__(self, root: Path, row: dict[str, Any], work: Path) -> None:
        import torch

        from tasks.config import EncodersConfig
        from tasks.features.cache import FeatureCache
        from tasks.images import load_square_rgb
        from tasks.serve.predict import absolute_file_cells, new_rows
        from tasks.serve.served import load_served

        work.mkdir(parents=True)
        served = load_served(root / "models", FeatureCache(work / "cache"))
        self.predictor, data, self.cpu = served.predictor, served.data, torch.device("cpu")
        encoders = EncodersConfig.model_validate(self.predictor.meta.params.get("encoders", {}))
        self.max_length = encoders.text.max_length
        self.text = _prepared(self.predictor.specs["text"], self.cpu)
        self.texts = [row[column] for column in data.columns.text if row.get(column)]
        self.image, self.pixels = None, None
        if row["photo"] is not None:
            (work / "bare.png").write_bytes(base64.b64decode(row["photo"]))
            self.image = _prepared(self.predictor.specs["image"], self.cpu)
            self.pixels = torch.from_numpy(
                load_square_rgb(work / "bare.png", encoders.image.image_size)[None]
            )
        frame = pd.DataFrame([{**row, "photo": "bare.png" if self.image is not None else None}])
        roots = {**served.roots, "image": work}
        self.rows = absolute_file_cells(new_rows(frame, data, roots, "bench"), data, roots)
        self.features = self.predictor.features(self.rows, roots, served.cache, self.cpu)
        self.seconds()  # one-off costs (kernels chosen on the first call) paid here

    def seconds(self) -> float:
        import torch

        from tasks.device import single_threaded
        from tasks.modalities.image import encode_image_batches
        from tasks.modalities.text import encode_sorted_texts

        total = sum(encode_sorted_texts(self.text, [t], self.max_length, 1, self.cpu)[1] for t in self.texts)
        if self.image is not None:
            batch = iter([(self.pixels, torch.ones(1, dtype=torch.int64))])
            total += encode_image_batches(self.image, batch, 1, self.cpu)[2]
        began = time.perf_counter()
        with single_threaded():
            self.predictor.final.predict(self.features, self.rows)
        return total + time.perf_counter() - began


def _prepared(spec: Any, device: Any) -> Any:
    """The served encoder as extraction runs it (on the device, in its preferred memory layout)."""
    return spec.modality.prepare_encoder(spec.load(), device)


def _batch_rows_per_second(root: Path, rows: list[dict[str, Any]], work: Path) -> float:
    """`fuseline predict`'s Predictor on the same rows (images written as files), fresh cache."""
    from tasks.features.cache import FeatureCache
    from tasks.serve.served import load_served

    images = work / "batch-images"
    images.mkdir()
    records = []
    for number, row in enumerate(rows):
        (images / f"{number}.png").write_bytes(base64.b64decode(row["photo"]))
        records.append({**row, "item_id": f"b{number}", "photo": f"{number}.png"})
    served = load_served(root / "models", FeatureCache(work / "batch-cache"), {"image": str(images)})
    served.predict(pd.DataFrame(records[:2]))  # warm: encoders loaded, as the server's are
    started = time.perf_counter()
    served.predict(pd.DataFrame(records[2:]))
    return (len(records) - 2) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", required=True, type=Path)
    parser.add_argument("--latency-requests", type=int, default=50)
    parser.add_argument("--throughput-rows", type=int, default=256)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads, here and in the server (a busy "
        "shared CPU: 1, or threads wait on each other)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import httpx
    import torch

    torch.set_num_threads(args.threads)

    root = args.project.resolve()
    os.chdir(root)
    images = root / "data" / "demo" / "images"
    raw = pd.read_csv(root / "data" / "demo" / "items.csv", dtype=str, keep_default_na=False)
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    port = _free_port()
    server = _start_server(root, port, work / "server.log", args.threads)
    url = f"http://127.0.0.1:{port}"
    try:
        text_rows = _rows(raw, args.latency_requests, "text", None)
        image_rows = _rows(raw, args.latency_requests, "image", images)
        bare_text = BareForward(root, text_rows[0], work / "bare-text")
        bare_image = BareForward(root, image_rows[0], work / "bare-image")
        with httpx.Client(base_url=url, timeout=120) as http:
            _wait_up(http, server, work / "server.log")
            for warm in _rows(raw, 3, "warm", images):  # encoders loaded, first-call costs paid
                http.post("/predict", json={"rows": [warm]}).raise_for_status()
            text_latency = _latency(http, text_rows, bare_text)
            image_latency = _latency(http, image_rows, bare_image)
            before = http.get("/health").json()
            throughput_rows = _rows(raw, args.throughput_rows + 2, "load", images)
            api_rate = _throughput(url, throughput_rows[2:], args.clients)
            after = http.get("/health").json()
        server.terminate()
        server.wait(timeout=30)
        batch_rate = _batch_rows_per_second(root, throughput_rows, work)
    finally:
        server.terminate()
        shutil.rmtree(work, ignore_errors=True)

    def latency(measured: tuple[list[float], list[float]]) -> dict[str, float]:
        found, bare = _percentiles(measured[0]), _percentiles(measured[1])
        return {
            **found,
            "bare_p50_ms": bare["p50_ms"],
            "p50_over_bare": round(found["p50_ms"] / bare["p50_ms"], 2),
        }

    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "latency": {
            "requests": args.latency_requests,
            "text_tabular": latency(text_latency),
            "image": latency(image_latency),
        },
        "throughput": {
            "clients": args.clients,
            "rows": args.throughput_rows,
            "api_rows_per_s": round(api_rate, 2),
            "predict_rows_per_s": round(batch_rate, 2),
            "api_over_predict": round(api_rate / batch_rate, 2),
            "batches": after["batches"] - before["batches"],
        },
    }
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
