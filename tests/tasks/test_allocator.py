"""A CPU forward's freed activations stay in the process for the next batch (tasks.allocator).

Each case runs in a fresh interpreter: the thresholds are process-wide and one-way, and the
point is the difference from glibc's defaults, which this test process no longer has.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc malloc's",
)

# Page faults of each of four forwards of the demo's image CNN (random weights, 8 images).
FAULTS_PER_FORWARD = """
import json, resource, sys, timm, torch
from tasks.device import pick_device
if sys.argv[1] == "picked":
    assert pick_device("cpu").type == "cpu"
torch.set_num_threads(1)
model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
images = torch.randn(8, 3, 224, 224)
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        model(images)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([faults() for _ in range(4)]))
"""


def faults_per_forward(*modes: str) -> list[list[int]]:
    """Each mode's page faults per forward, the interpreters run side by side (the counts are
    each process's own, and the imports are most of each one's time)."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FAULTS_PER_FORWARD, mode],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for mode in modes
    ]
    counts = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        counts.append(json.loads(out.splitlines()[-1]))
    return counts


def test_picking_the_cpu_keeps_a_forwards_freed_activations_for_the_next_one() -> None:
    untuned, picked = faults_per_forward("untouched", "picked")
    # glibc's defaults hand the activations back after every forward and fault them in
    # again, zeroed (45,000-73,000 pages of 4 KiB here); kept, the first forward faults them
    # in and the next ones reuse them (a few thousand faults at most while the heap settles).
    assert min(untuned[1:]) > 20_000, untuned
    assert picked[-1] < 5_000 and sum(picked[1:]) < min(untuned[1:]) / 4, (picked, untuned)


def test_the_environment_can_leave_glibcs_defaults() -> None:
    """For a user whose memory is tighter than their time: the thresholds stay untouched."""
    ask = "from tasks.allocator import keep_freed_memory; print(keep_freed_memory())"
    answers = {
        value: subprocess.run(
            [sys.executable, "-c", ask], cwd=REPO, capture_output=True, text=True, check=True,
            env={**os.environ, "FUSELINE_KEEP_FREED_MEMORY": value},
        ).stdout.strip()
        for value in ("0", "1")
    }  # fmt: skip
    assert answers == {"0": "False", "1": "True"}
