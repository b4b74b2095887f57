"""Text batches: padded to their longest text, so a long text does not share a batch with short ones."""

from tasks.modalities.text import batch_bounds


def test_a_title_and_a_long_description_are_encoded_apart() -> None:
    """One API request holds a row's few texts; in one batch the title was padded to the description."""
    assert batch_bounds([30, 300], 64) == [(0, 1), (1, 2)]


def test_sorted_texts_of_similar_length_fill_whole_batches() -> None:
    assert batch_bounds(list(range(10, 200)), 64) == [(0, 64), (64, 128), (128, 190)]


def test_every_text_is_in_exactly_one_batch() -> None:
    lengths = sorted([3, 3, 40, 41, 90, 200, 201, 202, 900, 5000])
    bounds = batch_bounds(lengths, 3)
    assert [i for start, end in bounds for i in range(start, end)] == list(range(len(lengths)))
    assert all(0 < end - start <= 3 for start, end in bounds)
    assert batch_bounds([], 8) == []
