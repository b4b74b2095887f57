from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from tasks.config import DataConfig
from tasks.data.align import DIGEST, ID, PRESENT, SPLIT, TARGET, align
from tasks.errors import DataError


def data_config(image_root: Path | str = ".", **overrides: object) -> DataConfig:
    raw: dict = {
        "sources": [{"path": "items.csv"}],
        "id": "item_id",
        "target": "label",
        "task": "binary",
        "columns": {"categorical": ["category"], "numeric": ["price"], "text": ["title"]},
        "image_root": str(image_root),
    }
    raw.update(overrides)
    return DataConfig.model_validate(raw)


def snapshot(columns: dict[str, list]) -> pd.DataFrame:
    """A frame typed the way ingest writes it: strings as `string`, numbers as float64."""
    frame = pd.DataFrame(columns)
    for name in frame.columns:
        frame[name] = frame[name].astype("float64" if name == "price" else "string")
    return frame


def items(rows: int = 200, positive_share: float = 0.3) -> pd.DataFrame:
    positives = int(rows * positive_share)
    return snapshot(
        {
            "item_id": [f"id-{i:04d}" for i in range(rows)],
            "label": ["pos" if i < positives else "neg" for i in range(rows)],
            "category": [("a", "b", "c")[i % 3] for i in range(rows)],
            "price": [float(i) for i in range(rows)],
            "title": [f"item {i}" for i in range(rows)],
        }
    )


def split_by_id(aligned: pd.DataFrame) -> dict[str, str]:
    return dict(zip(aligned[ID], aligned[SPLIT], strict=True))


def align_error(data: DataConfig, sources: list[tuple[str, pd.DataFrame]]) -> DataError:
    with pytest.raises(DataError) as info:
        align(data, sources)
    return info.value


# --- joining -------------------------------------------------------------------------------


def test_two_sources_join_on_the_id() -> None:
    base = items(30)
    side = snapshot({"item_id": list(base["item_id"])[::-1], "title": [f"t{i}" for i in range(30)]})
    aligned, _ = align(data_config(), [("a.csv", base.drop(columns="title")), ("b.csv", side)])
    titles = dict(zip(aligned[ID], aligned["title"], strict=True))
    expected = dict(zip(side["item_id"], side["title"], strict=True))
    assert titles == expected
    assert len(aligned) == 30


def test_ids_only_in_a_later_source_are_dropped_and_counted() -> None:
    base = items(30)
    side = snapshot(
        {"item_id": [*base["item_id"][:20], "stray-1", "stray-2"], "title": [f"t{i}" for i in range(22)]}
    )
    aligned, report = align(data_config(), [("a.csv", base.drop(columns="title")), ("b.csv", side)])
    assert set(aligned[ID]) == set(base["item_id"])
    assert report.dropped_unmatched_ids == {"b.csv": 2}
    # base rows the side table lacks are kept, with the side's columns absent
    assert int(aligned[PRESENT + "title"].sum()) == 20


def test_a_column_in_two_sources_fails() -> None:
    base = items(30)
    side = snapshot({"item_id": list(base["item_id"]), "title": ["x"] * 30})
    error = align_error(data_config(), [("a.csv", base), ("b.csv", side)])
    assert error.column == "title"
    assert "a.csv" in str(error) and "b.csv" in str(error)


def test_duplicate_ids_fail_naming_the_ids() -> None:
    frame = items(30)
    frame.loc[5, "item_id"] = "id-0001"
    frame.loc[9, "item_id"] = "id-0002"
    error = align_error(data_config(), [("a.csv", frame)])
    assert error.rows == ["id-0001", "id-0002"]
    assert "id-0001" in str(error) and "id-0002" in str(error)
    assert "more than once" in str(error)


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_rows_without_an_id_fail(blank: str | None) -> None:
    frame = items(30)
    frame.loc[3, "item_id"] = blank
    error = align_error(data_config(), [("a.csv", frame)])
    assert "no id" in str(error)
    assert error.rows == [4]
    assert "a.csv" in str(error)


# --- target ------------------------------------------------------------------------------------


def test_missing_target_fails_naming_the_rows() -> None:
    frame = items(30)
    frame.loc[[2, 7], "label"] = None
    error = align_error(data_config(), [("a.csv", frame)])
    assert "no target" in str(error)
    assert error.rows == ["id-0002", "id-0007"]


def test_missing_regression_target_fails() -> None:
    frame = items(30)
    frame["label"] = np.arange(30, dtype="float64")
    frame.loc[4, "label"] = np.nan
    error = align_error(data_config(task="regression"), [("a.csv", frame)])
    assert error.rows == ["id-0004"]


def test_class_with_too_few_rows_fails() -> None:
    frame = items(30)
    frame["label"] = ["a"] * 14 + ["b"] * 14 + ["rare"] * 2
    error = align_error(data_config(task="multiclass"), [("a.csv", frame)])
    assert "'rare'" in str(error)
    assert error.rows == ["id-0028", "id-0029"]


def test_binary_target_with_three_classes_fails() -> None:
    frame = items(30)
    frame["label"] = ["a", "b", "c"] * 10
    error = align_error(data_config(), [("a.csv", frame)])
    assert "exactly 2 classes" in str(error)


# --- split ---------------------------------------------------------------------------------------


def test_split_is_deterministic_for_a_seed() -> None:
    first, _ = align(data_config(), [("a.csv", items())])
    second, _ = align(data_config(), [("a.csv", items())])
    assert split_by_id(first) == split_by_id(second)


def test_split_changes_with_the_seed() -> None:
    first, _ = align(data_config(), [("a.csv", items())])
    other = data_config(split={"seed": 43})
    second, _ = align(other, [("a.csv", items())])
    assert split_by_id(first) != split_by_id(second)


def test_split_does_not_depend_on_input_row_order() -> None:
    frame = items()
    shuffled = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    first, _ = align(data_config(), [("a.csv", frame)])
    second, _ = align(data_config(), [("a.csv", shuffled)])
    assert split_by_id(first) == split_by_id(second)


def test_split_sizes_follow_the_fractions() -> None:
    aligned, report = align(data_config(), [("a.csv", items(200))])
    assert report.rows == 200
    assert report.rows_per_split == {"train": 140, "val": 30, "test": 30}
    assert aligned[SPLIT].value_counts().to_dict() == report.rows_per_split


def test_too_few_rows_to_stratify_fails_as_a_data_error() -> None:
    # 4 classes x 3 rows: 15% of 12 rows is 2 test rows, too few to hold every class
    frame = items(12)
    frame["label"] = ["a", "b", "c", "d"] * 3
    error = align_error(data_config(task="multiclass"), [("a.csv", frame)])
    assert "cannot split" in str(error)


def test_split_is_stratified_by_class() -> None:
    aligned, _ = align(data_config(), [("a.csv", items(200, positive_share=0.3))])
    for name in ("train", "val", "test"):
        share = (aligned.loc[aligned[SPLIT] == name, TARGET] == "pos").mean()
        assert share == pytest.approx(0.3, abs=0.04), name


def test_no_id_is_in_two_splits() -> None:
    aligned, _ = align(data_config(), [("a.csv", items())])
    assert aligned[ID].is_unique
    assert set(aligned[SPLIT]) == {"train", "val", "test"}
    by_split = [set(aligned.loc[aligned[SPLIT] == s, ID]) for s in ("train", "val", "test")]
    assert not (by_split[0] & by_split[1] or by_split[0] & by_split[2] or by_split[1] & by_split[2])


def test_regression_split_is_not_stratified_and_still_complete() -> None:
    frame = items(100)
    frame["label"] = np.linspace(0.0, 1.0, 100)
    aligned, report = align(data_config(task="regression"), [("a.csv", frame)])
    assert sum(report.rows_per_split.values()) == 100
    assert aligned[TARGET].dtype == "float64"


def test_given_split_column_is_honoured() -> None:
    frame = items(60)
    frame["fold"] = pd.array(["train", "val", "test"] * 20, dtype="string")
    aligned, _ = align(data_config(split={"column": "fold"}), [("a.csv", frame)])
    assert split_by_id(aligned) == dict(zip(frame["item_id"], frame["fold"], strict=True))


def test_given_split_values_are_read_case_and_alias_insensitively() -> None:
    frame = items(60)
    frame["fold"] = pd.array([" Training", "VALIDATION", "test "] * 20, dtype="string")
    aligned, _ = align(data_config(split={"column": "fold"}), [("a.csv", frame)])
    assert aligned[SPLIT].value_counts().to_dict() == {"train": 20, "val": 20, "test": 20}


def test_val_is_carved_from_train_when_the_split_column_has_none() -> None:
    frame = items(200)
    frame["fold"] = pd.array(["test" if i % 5 == 0 else "train" for i in range(200)], dtype="string")
    aligned, _ = align(data_config(split={"column": "fold"}), [("a.csv", frame)])
    given = dict(zip(frame["item_id"], frame["fold"], strict=True))
    result = split_by_id(aligned)
    assert all(result[i] == "test" for i, s in given.items() if s == "test")
    assert all(result[i] in ("train", "val") for i, s in given.items() if s == "train")
    # val takes val / (train + val) = 0.15 / 0.85 of the 160 given train rows
    assert list(aligned[SPLIT]).count("val") == round(160 * 0.15 / 0.85)


def test_unknown_split_value_fails_naming_rows() -> None:
    frame = items(30)
    frame["fold"] = pd.array(["train"] * 29 + ["holdout"], dtype="string")
    error = align_error(data_config(split={"column": "fold"}), [("a.csv", frame)])
    assert error.column == "fold"
    assert error.rows == ["id-0029"]


# --- images ---------------------------------------------------------------------------------


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4), (200, 0, 0)).save(root / "a.jpg")  # align test-decodes every image
    Image.new("RGB", (4, 4), (0, 0, 200)).save(root / "sub" / "b.jpg")
    (tmp_path / "secret.txt").write_text("outside the root")
    os.symlink(tmp_path / "secret.txt", root / "link.jpg")
    return root


def image_rows(paths: list[str | None]) -> pd.DataFrame:
    frame = items(30)
    photos = [*paths, *(["a.jpg"] * (30 - len(paths)))]
    frame["photo"] = pd.array(photos, dtype="string")
    return frame


def image_config(root: Path) -> DataConfig:
    return data_config(
        root,
        columns={"categorical": ["category"], "numeric": ["price"], "text": ["title"], "image": ["photo"]},
    )


@pytest.mark.parametrize("escaping", ["../secret.txt", "sub/../../secret.txt", "/etc/passwd", "link.jpg"])
def test_image_paths_leaving_the_root_are_refused(image_tree: Path, escaping: str) -> None:
    aligned, report = align(image_config(image_tree), [("a.csv", image_rows([escaping]))])
    row = aligned.set_index(ID).loc["id-0000"]
    assert pd.isna(row["photo"])
    assert not row[PRESENT + "photo"]
    assert pd.isna(row[DIGEST + "photo"])
    assert report.paths_refused == {"photo": 1}
    assert report.files_missing == {"photo": 0}


def test_nonexistent_image_is_counted_as_missing(image_tree: Path) -> None:
    aligned, report = align(image_config(image_tree), [("a.csv", image_rows(["nope.jpg", "sub"]))])
    rows = aligned.set_index(ID)
    assert rows.loc[["id-0000", "id-0001"], "photo"].isna().all()
    assert report.files_missing == {"photo": 2}
    assert report.paths_refused == {"photo": 0}


def test_usable_images_are_kept_relative_to_the_root(image_tree: Path) -> None:
    aligned, report = align(image_config(image_tree), [("a.csv", image_rows(["sub/b.jpg", "./a.jpg"]))])
    rows = aligned.set_index(ID)
    assert rows.loc["id-0000", "photo"] == "sub/b.jpg"
    assert rows.loc["id-0001", "photo"] == "a.jpg"
    assert report.present["photo"] == 30


def test_image_digest_is_the_sha256_of_the_file_bytes(image_tree: Path) -> None:
    aligned, _ = align(image_config(image_tree), [("a.csv", image_rows(["sub/b.jpg", "a.jpg"]))])
    rows = aligned.set_index(ID)
    expected_b = hashlib.sha256((image_tree / "sub" / "b.jpg").read_bytes()).hexdigest()
    expected_a = hashlib.sha256((image_tree / "a.jpg").read_bytes()).hexdigest()
    assert rows.loc["id-0000", DIGEST + "photo"] == expected_b
    assert rows.loc["id-0001", DIGEST + "photo"] == expected_a


def test_blank_image_path_is_absent_but_not_counted(image_tree: Path) -> None:
    aligned, report = align(image_config(image_tree), [("a.csv", image_rows([None, "  "]))])
    assert not aligned.set_index(ID).loc[["id-0000", "id-0001"], PRESENT + "photo"].any()
    assert report.files_missing == {"photo": 0}
    assert report.paths_refused == {"photo": 0}


def test_a_file_many_rows_share_is_read_once(image_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.modalities.image import ImageModality

    probed: list[Path] = []
    probe_file = ImageModality.probe_file

    def counting(self: ImageModality, path: Path) -> tuple[str, str | None]:
        probed.append(path)
        return probe_file(self, path)

    monkeypatch.setattr(ImageModality, "probe_file", counting)
    aligned, report = align(image_config(image_tree), [("a.csv", image_rows(["sub/b.jpg"]))])
    assert sorted(p.name for p in probed) == ["a.jpg", "b.jpg"]  # 29 rows show a.jpg
    assert report.present["photo"] == 30


def test_thousands_of_files_probed_in_parallel_keep_each_row_its_own_digest(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    rows = 2600  # more than one block of files handed to the probing threads
    for i in range(rows):
        Image.new("RGB", (2, 2), (i % 256, i // 256, 7)).save(root / f"{i}.png")
    (root / "13.png").write_bytes(b"not an image")
    frame = items(rows)
    frame["photo"] = pd.array([f"{i}.png" for i in range(rows)], dtype="string")
    aligned, report = align(image_config(root), [("a.csv", frame)])
    by_id = aligned.set_index(ID)
    for i in (0, 1, 1024, 2047, 2599):
        expected = hashlib.sha256((root / f"{i}.png").read_bytes()).hexdigest()
        assert by_id.loc[f"id-{i:04d}", DIGEST + "photo"] == expected
    assert pd.isna(by_id.loc["id-0013", DIGEST + "photo"])
    assert report.files_undecodable == {"photo": 1}
    with pytest.raises(DataError) as info:
        align(image_config(root).model_copy(update={"on_bad_image": "error"}), [("a.csv", frame)])
    assert info.value.rows == ["id-0013"]


# --- presence ---------------------------------------------------------------------------------


def test_presence_is_false_for_empty_or_whitespace_text() -> None:
    frame = items(30)
    frame.loc[[0, 1, 2], "title"] = ["", "   \t", None]
    aligned, report = align(data_config(), [("a.csv", frame)])
    present = dict(zip(aligned[ID], aligned[PRESENT + "title"], strict=True))
    assert [present[f"id-{i:04d}"] for i in range(4)] == [False, False, False, True]
    assert report.present["title"] == 27


def test_presence_is_false_for_nan_numerics() -> None:
    frame = items(30)
    frame.loc[[4, 5], "price"] = np.nan
    aligned, report = align(data_config(), [("a.csv", frame)])
    present = dict(zip(aligned[ID], aligned[PRESENT + "price"], strict=True))
    assert not present["id-0004"] and not present["id-0005"]
    assert present["id-0006"]
    assert report.present["price"] == 28


def test_presence_columns_are_bool() -> None:
    aligned, _ = align(data_config(), [("a.csv", items(30))])
    for column in ("category", "price", "title"):
        assert aligned[PRESENT + column].dtype == bool


def test_aligned_rows_are_sorted_by_id() -> None:
    shuffled = items(30).sample(frac=1.0, random_state=1).reset_index(drop=True)
    aligned, _ = align(data_config(), [("a.csv", shuffled)])
    assert list(aligned[ID]) == sorted(aligned[ID])
    assert list(aligned.columns[:3]) == [ID, SPLIT, TARGET]


@pytest.mark.parametrize("name", ["split", "row_id", "target", "present__photo", "sha256__photo", "__wide__"])
def test_reserved_feature_name_fails_at_load(name: str) -> None:
    with pytest.raises(ValidationError, match="fuseline"):
        data_config(columns={"categorical": [name], "numeric": ["price"]})
