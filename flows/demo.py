"""Stage `demo`: render the embedded synthetic dataset that the default params.yaml reads."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows._entry import run_from_command_line
from tasks.atomic import write_text
from tasks.config import load_params
from tasks.data.demo import generate_demo

DEMO_DIR = Path("data/demo")


@flow(name="demo-data")
def demo(params_path: str = "params.yaml") -> None:
    """Generate the demo table and JPEGs (skipped when already generated with these params)."""
    params = load_params(params_path)
    logger = get_run_logger()
    if params.data.demo is None:
        # dvc.yaml declares data/demo as this stage's output, so leave a note rather than nothing.
        write_text(
            "The demo dataset is disabled (data.demo: null in params.yaml).\n", DEMO_DIR / "DISABLED.txt"
        )
        logger.info("demo data disabled; using the sources in params.yaml")
        return
    (DEMO_DIR / "DISABLED.txt").unlink(missing_ok=True)
    table, images, audio = (
        Path(p) for p in (params.data.sources[0].path, params.data.image_root, params.data.audio_root)
    )
    generate_demo(table, images, rows=params.data.demo.rows, seed=params.data.demo.seed, audio_root=audio)
    logger.info(
        "demo dataset: %d rows in %s, images in %s, clips in %s", params.data.demo.rows, table, images, audio
    )


if __name__ == "__main__":
    run_from_command_line(demo, "Render the synthetic demo dataset.")
