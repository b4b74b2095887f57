"""A modality from outside fuseline: a package registered through the `fuseline.modalities` entry
point runs align -> extract -> train -> predict, with no file of fuseline edited to add it.

The package (`toyseq`: cells name `.npy` files under `data.toyseq_root`, each a fixed-length
float vector, encoded by a fixed random projection plus mean and spread, then two small
linear units that its plug-in lets fuseline fine-tune) is written to a site directory with its
`*.dist-info/entry_points.txt`, as pip would install it, and the flows run in a fresh
interpreter that has that directory on its path: entry points are read once per process, as
an installed package's would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

ROWS = 60
LENGTH = 8

PLUGIN = '''
"""toyseq: fixed-length float vectors in .npy files under data.toyseq_root."""

from __future__ import annotations

import time

import numpy as np
import torch
from pydantic import Field
from torch import nn

from modelzoo.encoders.loading import module_fingerprint
from modelzoo.encoders.split import FrozenLower, SplitTop
from tasks.modalities.base import FineTuning
from tasks.modalities.files import FileModality, raise_changed, read_verified
from tasks.strict import Strict


class ToySeqFinetune(Strict):
    units: int = Field(0, ge=0)
    lr: float = 1e-3
    warmup: float = 0.0
    epochs: int = 2
    batch_size: int = 16


class ToySeqConfig(Strict):
    model: str = "projection"
    length: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    finetune: ToySeqFinetune = ToySeqFinetune()


class Stem(nn.Module):
    """(B, length) -> (B, 6): a fixed random projection to 4, then the mean and the spread."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.register_buffer("projection", torch.randn(length, 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x @ self.projection, x.mean(1, keepdim=True), x.std(1, keepdim=True)], 1)


class ProjectionEncoder(nn.Module):
    """The stem, then two small linear units: the units can be fine-tuned."""

    def __init__(self, length: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = Stem(length)
        self.units = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh()), nn.Linear(6, 6)])
        self.dim = 6
        self.model_id = "toyseq-projection"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Sequential(self.stem, *self.units)(x)


class ToyLower(FrozenLower):
    def __init__(self, encoder, depth):
        super().__init__(depth, len(encoder.units))
        self.net = nn.Sequential(encoder.stem, *encoder.units[:depth])  # shared, not copied

    def run(self, x):
        return self.net(x)


class ToyTop(SplitTop):
    part, kind, unit, where = "units", "toyseq", "units", "last"
    lower, needs = ToyLower, "a stem and units"

    def __init__(self, encoder, depth):
        super().__init__(encoder, list(encoder.units), depth)

    def forward(self, hidden):
        return self.units(hidden)

    @staticmethod
    def probe(encoder, lower, top):
        x = torch.randn(4, encoder.stem.projection.shape[0], generator=torch.Generator().manual_seed(0))
        return encoder(x), top(lower(x))


class ToySeqFineTuning(FineTuning):
    top_class = ToyTop
    depth_key = "units"
    cost = 0
    cache_format = "toyseq-units/v1"

    def plausible(self, array, lower):
        return array.shape == (6,)

    def lower_batches(self, lower, batches, device):
        for batch in batches:
            x = np.zeros((len(batch), self.section.length), dtype=np.float32)
            for row, (digest, path) in enumerate(batch):
                array = read_verified(path, bytes.fromhex(digest), _read)[1]
                x[row, : min(len(array), len(x[row]))] = array[: len(x[row])]
            yield [out.half() for out in lower(torch.from_numpy(x).to(device)).float().cpu()]

    def collate(self, outputs, device):
        return (torch.stack(outputs).to(device=device, dtype=torch.float32),)


def _read(handle):
    return np.load(handle, allow_pickle=False)


class ToySeqModality(FileModality):
    name = "toyseq"
    order = 10
    input_version = "toyseq-npy/v1"
    encoder_config = ToySeqConfig
    noun = "sequence file"
    fine_tuning = ToySeqFineTuning

    def size_of(self, config):
        return int(config.length)

    def preprocessing(self, size):
        return {"length": size}

    def load_encoder(self, model, size):
        return ProjectionEncoder(size).eval()

    def fingerprint(self, encoder, preprocessing):
        return module_fingerprint(self.name, encoder, preprocessing)

    def probe(self, path):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            return f"not a .npy array ({err})"
        return None if array.ndim == 1 and array.dtype.kind == "f" else "not a 1-d float array"

    def encode_chunk(self, job, index):
        slots = job.chunk(index)
        batch = np.zeros((len(slots), job.spec.size), dtype=np.float32)
        for position, slot in enumerate(slots):
            same, array = read_verified(job.contents.sources[slot], job.contents.keys[slot], _read)
            if not same:
                raise_changed(job.contents, slots[position : position + 1], self.noun)
            batch[position, : min(len(array), job.spec.size)] = array[: job.spec.size]
        started = time.perf_counter()
        with torch.inference_mode():
            vectors = job.encoder(torch.from_numpy(batch).to(job.device)).float().cpu().numpy()
        return vectors, np.ones(len(slots), dtype=bool), time.perf_counter() - started
'''

DRIVER = """
from flows.align import align_flow
from flows.extract import extract
from flows.ingest import ingest
from flows.predict import predict
from flows.train import train

ingest()
align_flow()
extract()
train()
predict(model="models", input_path="new.csv", output_path="predictions.parquet")
"""


def install_plugin(site: Path, entry_point: str, source: str = PLUGIN) -> None:
    """The package as an installer leaves it: its module, and its dist-info naming the entry point."""
    (site / "toyseq_modality").mkdir(parents=True)
    (site / "toyseq_modality" / "__init__.py").write_text(source)
    info = site / "toyseq_modality-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyseq-modality\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fuseline.modalities]\ntoyseq = {entry_point}\n")


def run_python(
    args: list[str], cwd: Path, site: Path, prefect_api: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    if prefect_api is not None:
        env["PREFECT_API_URL"] = prefect_api
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def write_project(project: Path) -> None:
    """60 rows whose label is the sign of their sequence's mean, a noise column, 10 new rows."""
    rng = np.random.default_rng(0)
    (project / "seqs").mkdir(parents=True)
    names, labels = [], []
    for row in range(ROWS + 10):
        sequence = rng.normal(0.0, 1.0, LENGTH).astype(np.float32)
        np.save(project / "seqs" / f"s{row}.npy", sequence)
        names.append(f"s{row}.npy")
        labels.append("yes" if sequence.mean() > 0 else "no")
    table = pd.DataFrame(
        {"item_id": [f"i{r}" for r in range(ROWS + 10)], "x": rng.normal(size=ROWS + 10), "seq": names}
    )
    table.assign(label=labels).iloc[:ROWS].to_csv(project / "items.csv", index=False)
    table.iloc[ROWS:].to_csv(project / "new.csv", index=False)
    params = {
        "data": {
            "sources": [{"path": "items.csv"}],
            "id": "item_id",
            "target": "label",
            "task": "binary",
            "columns": {"numeric": ["x"], "toyseq": ["seq"]},
            "toyseq_root": "seqs",
            "split": {"method": "hash"},
        },
        "encoders": {"toyseq": {"length": LENGTH, "finetune": {"units": 1}}},
        # no ensemble: the fine-tuned member asked for is the model prediction serves
        "train": {"epochs": 3, "patience": 2, "device": "cpu", "ensemble": False},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project after align, extract, train and predict, run with the toy package installed."""
    root = tmp_path_factory.mktemp("external")
    install_plugin(root / "site", "toyseq_modality:ToySeqModality")
    write_project(root / "project")
    result = run_python(["-c", DRIVER], root / "project", root / "site", prefect_api)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "project"


def test_extract_writes_the_external_modality_s_feature_file(project: Path) -> None:
    schema = pq.read_schema(project / "data" / "features" / "toyseq.parquet")
    encoder = json.loads(schema.metadata[b"fuseline"])["encoder"]
    assert "toyseq.seq" in schema.names and (encoder["model_id"], encoder["dim"]) == ("toyseq-projection", 6)


def test_the_model_reads_the_external_modality_and_predicts_new_rows(project: Path) -> None:
    bundle = json.loads((project / "models" / "bundle.json").read_text())
    assert bundle["in_dims"]["toyseq.seq"] == 6 and "toyseq" in bundle["encoders"]
    predictions = pd.read_parquet(project / "predictions.parquet")
    assert list(predictions["item_id"]) == [f"i{r}" for r in range(ROWS, ROWS + 10)]
    assert predictions["prob_yes"].between(0, 1).all()


def test_the_shared_member_fine_tunes_the_external_modality_s_encoder(project: Path) -> None:
    """The plug-in declares how its encoder splits; plan, member, cache, loop and bundle do the rest."""
    member = project / "models" / "members" / "finetuned_toyseq"
    info = json.loads((member / "finetune.json").read_text())
    assert (info["kind"], info["units"], info["columns"]) == ("finetuned_toyseq", 1, ["seq"])
    assert (member / "toyseq_top.safetensors").is_file()
    ensemble = json.loads((project / "models" / "ensemble.json").read_text())
    assert ensemble["members"] == {"finetuned_toyseq": 1.0}  # so predict served through the loaded member
    assert list((project / ".cache" / "features" / "hidden").rglob("*.npy"))  # the lower outputs, cached


def test_a_plugin_that_does_not_load_is_one_line_naming_it(tmp_path: Path) -> None:
    install_plugin(tmp_path / "site", "toyseq_modality:ToySeqModality", source="import no_such_module\n")
    write_project(tmp_path / "project")
    result = run_python(["-m", "flows.cli", "check"], tmp_path / "project", tmp_path / "site")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "fuseline: params.yaml: modality plug-in 'toyseq' (entry point 'toyseq_modality:ToySeqModality' "
        "in fuseline.modalities) cannot be used: ModuleNotFoundError: No module named 'no_such_module'"
    ]
