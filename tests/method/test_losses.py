"""Tests of the DyTox loss terms and of the reference loss fixture."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from continual.method.losses import (
    LossTerms,
    bce_with_logits,
    build_criterion,
    divergence_soft_targets,
    divergence_targets,
    dytox_loss,
    hard_cross_entropy,
    kd_loss,
    label_smoothing_cross_entropy,
    soft_target_cross_entropy,
)

FIXTURE_DIR = "fixtures/reference_dytox"


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ----------------------------------------------------------------- criteria


def test_bce_one_hot_matches_hand_computation() -> None:
    logits = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    targets = torch.tensor([0, 1])
    # one-hot [[1, 0], [0, 1]]; mean over the 4 (sample, class) terms
    terms = [
        -_log_sigmoid(1.0),  # target 1
        -_log_sigmoid(2.0),  # target 0: -log(1 - sigmoid(-2)) = -log sigmoid(2)
        -_log_sigmoid(-0.5),  # target 0
        -_log_sigmoid(3.0),  # target 1
    ]
    expected = sum(terms) / 4
    assert bce_with_logits(logits, targets).item() == pytest.approx(expected, abs=1e-7)


def test_bce_soft_targets_equal_one_hot_when_targets_are_one_hot() -> None:
    logits = torch.randn(5, 4)
    targets = torch.tensor([0, 3, 1, 2, 3])
    soft = F.one_hot(targets, 4).float()
    assert torch.equal(bce_with_logits(logits, targets), bce_with_logits(logits, soft))


def test_bce_rejects_mismatched_soft_targets() -> None:
    with pytest.raises(ValueError, match="soft targets"):
        bce_with_logits(torch.zeros(2, 3), torch.zeros(2, 4))


def test_label_smoothing_matches_torch() -> None:
    logits = torch.randn(6, 5, dtype=torch.float64)
    targets = torch.tensor([0, 1, 4, 2, 2, 3])
    ours = label_smoothing_cross_entropy(logits, targets, smoothing=0.1)
    reference = F.cross_entropy(logits, targets, label_smoothing=0.1)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-12)


def test_soft_target_cross_entropy_on_one_hot_is_cross_entropy() -> None:
    logits = torch.randn(4, 3, dtype=torch.float64)
    targets = torch.tensor([2, 0, 1, 1])
    soft = F.one_hot(targets, 3).double()
    ours = soft_target_cross_entropy(logits, soft)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, targets).item(), abs=1e-12)


@pytest.mark.parametrize(
    ("bce", "smoothing", "mixup", "expected"),
    [
        (True, 0.1, True, bce_with_logits),
        (True, 0.0, False, bce_with_logits),
        (False, 0.1, True, soft_target_cross_entropy),
        (False, 0.0, False, hard_cross_entropy),
    ],
)
def test_build_criterion_selection(bce: bool, smoothing: float, mixup: bool, expected) -> None:
    assert build_criterion(bce, smoothing, mixup) is expected


def test_build_criterion_label_smoothing() -> None:
    criterion = build_criterion(False, 0.2, False)
    logits, targets = torch.randn(3, 4), torch.tensor([0, 1, 3])
    assert torch.equal(criterion(logits, targets), label_smoothing_cross_entropy(logits, targets, 0.2))


# ---------------------------------------------------------- kd and lambda


def test_kd_zero_when_student_matches_teacher_on_old_logits() -> None:
    teacher = torch.randn(4, 3)
    student = torch.cat([teacher, torch.randn(4, 2)], dim=1)  # new logits differ, old equal
    assert kd_loss(student, teacher, tau=2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_positive_when_student_differs() -> None:
    teacher = torch.randn(4, 3)
    student = torch.cat([teacher + torch.randn(4, 3), torch.randn(4, 2)], dim=1)
    assert kd_loss(student, teacher, tau=1.0).item() > 1e-4


def test_kd_hand_computed_value() -> None:
    # one sample, two old classes, tau 2: KL mean over the 2 classes, times tau^2
    student, teacher, tau = torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([[2.0, 0.0]]), 2.0
    p_t = torch.softmax(teacher / tau, dim=1)[0]
    p_s = torch.softmax(student[:, :2] / tau, dim=1)[0]
    kl_terms = p_t * (p_t.log() - p_s.log())
    expected = kl_terms.sum().item() / 2 * tau**2
    assert kd_loss(student, teacher, tau).item() == pytest.approx(expected, abs=1e-6)


def test_auto_kd_lambda_is_old_over_all() -> None:
    logits, teacher = torch.randn(4, 10), torch.randn(4, 7)
    targets = torch.tensor([0, 8, 9, 3])
    plain = bce_with_logits(logits, targets)
    terms = dytox_loss(
        logits, None, targets, teacher, bce_with_logits,
        auto_kd=True, kd_weight=0.0, tau=1.0, head_div=0.1,
    )
    lam = 7 / 10
    assert terms.classification.item() == pytest.approx((1 - lam) * plain.item(), abs=1e-7)
    assert terms.kd.item() == pytest.approx(lam * kd_loss(logits, teacher, 1.0).item(), abs=1e-7)
    assert terms.div is None


def test_plain_kd_leaves_classification_unscaled() -> None:
    logits, teacher = torch.randn(4, 6), torch.randn(4, 4)
    targets = torch.tensor([0, 5, 4, 1])
    terms = dytox_loss(
        logits, None, targets, teacher, bce_with_logits,
        auto_kd=False, kd_weight=0.5, tau=2.0, head_div=0.0,
    )
    assert torch.equal(terms.classification, bce_with_logits(logits, targets))
    assert terms.kd.item() == pytest.approx(0.5 * kd_loss(logits, teacher, 2.0).item(), abs=1e-7)


def test_no_teacher_means_no_kd() -> None:
    terms = dytox_loss(
        torch.randn(2, 4), None, torch.tensor([0, 3]), None, bce_with_logits,
        auto_kd=True, kd_weight=0.0, tau=1.0, head_div=0.1,
    )
    assert terms.kd is None and terms.div is None
    assert torch.equal(terms.total, terms.classification)


# ------------------------------------------------------------- divergence


def test_divergence_targets_old_zero_new_one_to_n() -> None:
    targets = torch.tensor([0, 6, 7, 8, 9, 3])
    assert divergence_targets(targets, nb_old_classes=7).tolist() == [0, 0, 1, 2, 3, 0]


def test_divergence_soft_targets_pool_old_mass() -> None:
    soft = torch.tensor([[0.2, 0.3, 0.0, 0.5], [0.0, 0.0, 0.6, 0.4]])
    div = divergence_soft_targets(soft, nb_old_classes=2)
    assert torch.allclose(div, torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.6, 0.4]]))
    assert torch.allclose(div.sum(dim=1), torch.ones(2))


def test_divergence_soft_targets_match_hard_on_one_hot() -> None:
    targets = torch.tensor([1, 4, 2, 0])
    soft = divergence_soft_targets(F.one_hot(targets, 5).float(), nb_old_classes=2)
    assert soft.argmax(dim=1).tolist() == divergence_targets(targets, 2).tolist()


def test_divergence_term_uses_criterion_and_head_div() -> None:
    logits, div_logits = torch.randn(3, 5), torch.randn(3, 3)  # 3 old, 2 new
    targets = torch.tensor([1, 3, 4])
    terms = dytox_loss(
        logits, div_logits, targets, None, bce_with_logits,
        auto_kd=True, kd_weight=0.0, tau=1.0, head_div=0.1,
    )
    expected = 0.1 * bce_with_logits(div_logits, torch.tensor([0, 1, 2]))
    assert terms.div.item() == pytest.approx(expected.item(), abs=1e-8)


# ------------------------------------------------------ reference fixture


def _fixture_terms(case: dict, student, student_div, teacher) -> LossTerms:
    args = case["args_used"]
    criterion = build_criterion(args["bce_loss"], 0.0, mixup_active=False)
    return dytox_loss(
        student, student_div, case["targets"], teacher, criterion,
        auto_kd=args["auto_kd"], kd_weight=args["kd"],
        tau=args["distillation_tau"], head_div=args["head_div"],
    )


def _assert_terms(terms: LossTerms, case: dict, suffix: str, tol: float) -> None:
    assert terms.classification.item() == pytest.approx(case["loss" + suffix], abs=tol)
    assert terms.kd.item() == pytest.approx(case["kd" + suffix], abs=tol)
    assert terms.div.item() == pytest.approx(case["div" + suffix], abs=tol)
    assert terms.total.item() == pytest.approx(case["total" + suffix], abs=tol)


def test_reference_loss_case_float32() -> None:
    case = torch.load(shared_path(f"{FIXTURE_DIR}/loss_case.pt"), weights_only=True)
    assert case["lambda"] == pytest.approx(case["nb_old_classes"] / case["nb_classes"])
    terms = _fixture_terms(
        case, case["student_logits"], case["student_div_logits"], case["teacher_logits"]
    )
    _assert_terms(terms, case, "", 1e-6)


def test_reference_loss_case_float64() -> None:
    """The loss case stores float32 logits only; its float64 logits are the f64
    forward outputs of the same checkpoints on the same images."""
    case = torch.load(shared_path(f"{FIXTURE_DIR}/loss_case.pt"), weights_only=True)
    student = torch.load(
        shared_path(f"{FIXTURE_DIR}/outputs_task{case['student_task_id']}.pt"), weights_only=True
    )
    teacher = torch.load(
        shared_path(f"{FIXTURE_DIR}/outputs_task{case['teacher_task_id']}.pt"), weights_only=True
    )
    # same batch as the loss case: the float32 outputs are identical
    assert torch.equal(student["logits"], case["student_logits"])
    assert torch.equal(teacher["logits"], case["teacher_logits"])
    terms = _fixture_terms(case, student["logits_f64"], student["div_f64"], teacher["logits_f64"])
    assert terms.total.dtype == torch.float64
    _assert_terms(terms, case, "_f64", 1e-10)
