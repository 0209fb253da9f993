import pytest
import torch

from wdm_bundle.engines import SynthesisPrepareBatch, synthesis_inputs
from wdm_bundle.wavelets import HaarWavelet3D

W = HaarWavelet3D(3.0)


def _stack(b=3, k=4):
    return torch.rand(b, k, 8, 8, 8, generator=torch.Generator().manual_seed(0))


def test_fixed_target_conditions_on_the_others_in_order():
    stack = _stack()
    x0, cond = synthesis_inputs(W, stack, torch.tensor([2, 2, 2]), unified=False)
    torch.testing.assert_close(x0, W.encode(stack[:, 2:3]))
    torch.testing.assert_close(cond, W.encode(stack[:, [0, 1, 3]]))


def test_unified_zeroes_the_target_slot_and_flags_it():
    stack = _stack()
    targets = torch.tensor([0, 3, 1])
    x0, cond = synthesis_inputs(W, stack, targets, unified=True)
    assert cond.shape == (3, 8 * 4 + 4, 4, 4, 4)
    for i, t in enumerate(targets.tolist()):
        torch.testing.assert_close(x0[i], W.encode(stack[i, t][None, None])[0])
        slots = cond[i, :32].reshape(4, 8, 4, 4, 4)
        assert slots[t].abs().max() == 0
        for c in set(range(4)) - {t}:
            torch.testing.assert_close(slots[c], W.encode(stack[i, c][None, None])[0])
        flags = cond[i, 32:, 0, 0, 0]
        assert flags.tolist() == [float(c == t) for c in range(4)]
    # whatever the target slot holds (zeros at inference) does not change the condition
    blanked = stack.clone()
    blanked[torch.arange(3), targets] = 0
    torch.testing.assert_close(synthesis_inputs(W, blanked, targets, unified=True)[1], cond)


def test_prepare_batch_unified_draws_every_target():
    pb = SynthesisPrepareBatch(1000, W, num_contrasts=4)
    seen = set()
    torch.manual_seed(0)
    for _ in range(20):
        x0, target, args, kw = pb({"images": _stack(4)}, "cpu")
        assert x0.shape == (4, 8, 4, 4, 4) and torch.equal(target, x0)
        assert kw["condition"].shape == (4, 36, 4, 4, 4) and kw["noise"].shape == x0.shape
        seen.update(kw["condition"][:, 32:, 0, 0, 0].argmax(1).tolist())
    assert seen == {0, 1, 2, 3}


def test_prepare_batch_errors():
    with pytest.raises(ValueError, match="target_index"):
        SynthesisPrepareBatch(1000, W, num_contrasts=4, target_index=4)
    with pytest.raises(ValueError, match="expected 4 contrasts"):
        SynthesisPrepareBatch(1000, W, num_contrasts=4)({"images": _stack(2, 3)}, "cpu")
