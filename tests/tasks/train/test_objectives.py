"""Losses, class weights and output sizes per task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.errors import DataError
from tasks.train.objectives import Objective, balanced_weights, check_target, output_dim


def test_binary_balanced_weight_is_negatives_over_positives() -> None:
    weight = balanced_weights("binary", np.array([0, 0, 0, 1], dtype=np.float32), 1)
    torch.testing.assert_close(weight, torch.tensor([3.0]))


def test_multiclass_balanced_weights_follow_sklearn() -> None:
    weight = balanced_weights("multiclass", np.array([0, 0, 1, 2]), 3)  # n / (C * n_c)
    torch.testing.assert_close(weight, torch.tensor([4 / 6, 4 / 3, 4 / 3]))


def test_class_absent_from_train_keeps_weight_one() -> None:
    weight = balanced_weights("multiclass", np.array([0, 0, 1]), 3)
    assert weight[2].item() == 1.0


def test_multilabel_balanced_weights_are_per_label() -> None:
    target = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    torch.testing.assert_close(balanced_weights("multilabel", target, 2), torch.tensor([1 / 3, 3.0]))


def test_regression_has_no_class_weights() -> None:
    with pytest.raises(ValueError, match="classification"):
        balanced_weights("regression", np.array([1.0, 2.0]), 1)


def test_weighted_multiclass_loss_is_the_weighted_mean_of_row_losses() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    target = torch.tensor([0, 1])
    rows = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    weighted = Objective("multiclass", torch.tensor([1.0, 3.0])).loss(logits, target)
    assert weighted.item() == pytest.approx(((rows[0] + 3 * rows[1]) / 4).item())


def test_binary_pos_weight_scales_the_positive_rows_loss() -> None:
    logits, target = torch.tensor([[0.5]]), torch.tensor([1.0])
    plain = Objective("binary").loss(logits, target)
    weighted = Objective("binary", torch.tensor([4.0])).loss(logits, target)
    assert weighted.item() == pytest.approx(4 * plain.item())


def test_multilabel_output_has_one_logit_per_label() -> None:
    assert output_dim("multilabel", np.zeros((5, 4), dtype=np.float32), ()) == 4


def test_multilabel_target_of_the_wrong_width_is_a_data_error() -> None:
    with pytest.raises(DataError, match="multilabel"):
        check_target("multilabel", np.zeros((5, 3), dtype=np.float32), 4)
