"""`python -m flows.extract --modality M` for a modality the data has no columns of.

Such a stage writes only an id column and a one-line note, yet the full stage pays for
importing the encoders' stack and Prefect and for a flow run (about 5 s). A text + tabular
project reruns extract@image and extract@audio on every new drop of rows, so a scheduled
retrain spent about 10 s of each run on them. This path writes the same two outs (the same
calls the flow makes) before any of that is imported; nothing is encoded, so there is no
run to watch in the UI either.
"""

from __future__ import annotations

import argparse
import sys

from tasks.errors import FuselineError


def finish_if_no_columns(argv: list[str]) -> None:
    """Write the id-only feature file and the note, then exit 0; return when there is work to do."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--modality", default=None)
    args, _ = parser.parse_known_args(argv)
    if args.modality is None:
        return
    try:
        if not _write_empty_outs(args.params, args.modality):
            return
    except (FuselineError, OSError, ValueError):
        return  # the full stage reports it, in its own words
    print(f"extract@{args.modality}: the data has no {args.modality} columns; wrote the id-only feature file")
    sys.exit(0)


def _write_empty_outs(params_path: str, name: str) -> bool:
    import pyarrow.parquet as pq

    from tasks import modalities
    from tasks.config import load_params
    from tasks.features.feature_store import write_blocks
    from tasks.features.fitted import publish_state
    from tasks.paths import Layout
    from tasks.schema import ID

    if name not in modalities.modality_names() or name == modalities.TABULAR:
        return False
    params = load_params(params_path)
    if modalities.modality(name).columns(params.data):
        return False
    layout = Layout()
    ids = pq.read_table(layout.aligned, columns=[ID]).column(ID).to_pandas()
    publish_state(None, layout.fitted(name), name)
    write_blocks(layout.feature_file(name), ids.astype(str).to_numpy(dtype=object), {}, {}, {})
    return True
