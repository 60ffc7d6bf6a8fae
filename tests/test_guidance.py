"""The one classifier-free-guidance formula (diffusion/guidance.py)."""

import pytest
import torch

from diffclust.diffusion.guidance import check_guidance, guided_call


def _model(x, t, c):
    # an affine toy model whose conditional and null branches differ
    return x * 2 + t.reshape(-1, 1) + c.reshape(-1, 1).float()


def test_zero_weight_is_one_conditional_call():
    calls = []
    x, t, c = torch.randn(3, 2), torch.arange(3.0), torch.tensor([1, 2, 3])
    out = guided_call(lambda *a: calls.append(1) or _model(*a), x, t, c, torch.zeros(3), 0.0)
    assert len(calls) == 1 and torch.equal(out, _model(x, t, c))


def test_weight_mixes_branches_as_in_ho_salimans():
    x, t, c, null = torch.randn(4, 2), torch.arange(4.0), torch.tensor([1, 2, 3, 4]), torch.zeros(4)
    w = 1.5
    out = guided_call(_model, x, t, c, null, w)
    cond, uncond = _model(x, t, c), _model(x, t, null)
    assert torch.allclose(out, (1 + w) * cond - w * uncond)


def test_scalar_t_is_shared():
    x, c, null = torch.randn(2, 2), torch.tensor([1, 1]), torch.zeros(2)
    out = guided_call(lambda x, t, c: x * t + c.reshape(-1, 1), x, 3.0, c, null, 1.0)
    assert torch.allclose(out, x * 3.0 + 2.0)


@pytest.mark.parametrize("w", [float("nan"), float("inf")])
def test_bad_weight_is_refused(w):
    with pytest.raises(ValueError, match="guidance w"):
        check_guidance(w)
