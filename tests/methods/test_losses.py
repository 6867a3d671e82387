import math

import pytest
import torch

from hf_robust_distill.methods import attention_loss, ce_loss, cls_loss, kd_loss, patch_loss


def test_cls_cosine_and_mse_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # cosines: 1/sqrt(2) and -1
    expected = ((1 - 1 / math.sqrt(2)) + (1 - -1)) / 2
    assert cls_loss(s, t, "cosine").item() == pytest.approx(expected)
    assert cls_loss(s, t, "mse").item() == pytest.approx((0 + 1 + 0 + 9) / 4)


def test_cls_infonce_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    sims = [[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]
    row0 = -math.log(math.exp(sims[0][0] / tau) / sum(math.exp(v / tau) for v in sims[0]))
    row1 = -math.log(math.exp(sims[1][1] / tau) / sum(math.exp(v / tau) for v in sims[1]))
    assert cls_loss(s, t, "infonce", temperature=tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_patch_loss_averages_tokens_and_layers():
    s1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t1 = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])  # per-token 1 - cos: 0 and 2
    s2 = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    t2 = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])  # 1 and 0
    assert patch_loss([s1, s2], [t1, t2], "cosine").item() == pytest.approx((1.0 + 0.5) / 2)
    assert patch_loss([s1], [t1], "mse").item() == pytest.approx(4 / 4)
    with pytest.raises(ValueError, match="shape"):
        patch_loss([s1], [torch.zeros(1, 3, 2)])


def test_attention_loss_is_kl_teacher_to_student_per_row():
    t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # (B=1, heads=1, Q=2, K=2)
    s = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 1.0 * math.log(1.0 / 0.5)
    assert attention_loss([s], [t], "all").item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert attention_loss([s], [t], "cls").item() == pytest.approx(row0, rel=1e-6)
    assert attention_loss([t], [t]).item() == pytest.approx(0, abs=1e-7)


def test_kd_loss_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[0.0, 4.0, 0.0]])
    T = 2.0
    ps = torch.softmax(s / T, -1)[0].tolist()
    pt = torch.softmax(t / T, -1)[0].tolist()
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-5)
    # batch mean
    assert kd_loss(s.repeat(3, 1), t.repeat(3, 1), T).item() == pytest.approx(T * T * kl, rel=1e-5)


def test_ce_loss_ignores_unlabelled():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, -100])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert ce_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_losses_carry_gradients_to_the_student_only():
    s = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    cls_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
