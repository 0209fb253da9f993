import numpy as np
import pytest
import pywt
import torch

from wdm_bundle.wavelets import (
    PYWT_KEYS,
    SUBBANDS,
    HaarWavelet3D,
    ImageSpace,
    crop_padding,
    dwt3d,
    haar_filters,
    idwt3d,
    pad_to_multiple,
)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2, 2), (2, 3, 8, 6, 4), (1, 2, 16, 10, 12)])
def test_dwt_equals_pywavelets_band_by_band(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = dwt3d(x)
    b, c = shape[:2]
    assert y.shape == (b, 8 * c, shape[2] // 2, shape[3] // 2, shape[4] // 2)
    for i in range(b):
        for ch in range(c):
            ref = pywt.dwtn(x[i, ch].numpy(), "haar")
            for k, key in enumerate(PYWT_KEYS):
                np.testing.assert_allclose(y[i, 8 * ch + k].numpy(), ref[key], rtol=0, atol=1e-12, err_msg=key)


def test_band_names_match_pywt_keys():
    assert PYWT_KEYS == ("aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd")
    assert SUBBANDS[0] == "LLL" and SUBBANDS[-1] == "HHH"


def test_filters_are_orthonormal():
    f = haar_filters(torch.float64).reshape(8, 8)
    torch.testing.assert_close(f @ f.T, torch.eye(8, dtype=torch.float64))


def test_roundtrip_float32():
    x = torch.rand(3, 2, 32, 24, 16) * 4 - 2
    assert (idwt3d(dwt3d(x)) - x).abs().max() < 1e-5


def test_idwt_matches_pywavelets_inverse():
    x = torch.randn(1, 1, 6, 4, 8, dtype=torch.float64)
    y = dwt3d(x)
    coeffs = {key: y[0, k].numpy() for k, key in enumerate(PYWT_KEYS)}
    np.testing.assert_allclose(pywt.idwtn(coeffs, "haar"), x[0, 0].numpy(), atol=1e-12)


def test_energy_is_preserved():
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(dwt3d(x).pow(2).sum(), x.pow(2).sum())


def test_gradients_flow():
    x = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dwt3d, (x,))
    c = torch.randn(1, 8, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(idwt3d, (c,))
    coder = HaarWavelet3D(3.0)
    assert torch.autograd.gradcheck(lambda v: coder.decode(coder.encode(v) * 2), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_preserved(dtype):
    x = torch.rand(1, 1, 4, 4, 4).to(dtype)
    y = dwt3d(x)
    assert y.dtype == dtype and idwt3d(y).dtype == dtype
    torch.testing.assert_close(idwt3d(y).float(), x.float(), atol=2e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    x = torch.randn(2, 1, 8, 8, 8, device="cuda")
    assert dwt3d(x).device.type == "cuda"
    assert (idwt3d(dwt3d(x)) - x).abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(1, 1, 7, 8, 8), (1, 1, 8, 9, 8), (1, 1, 8, 8, 31)])
def test_odd_size_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="even spatial sizes.*pad_to_multiple"):
        dwt3d(torch.zeros(shape))


def test_wrong_rank_is_a_clear_error():
    with pytest.raises(ValueError, match="5D"):
        dwt3d(torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="multiple of 8"):
        idwt3d(torch.zeros(1, 7, 2, 2, 2))


def test_pad_to_multiple_records_and_undoes_padding():
    x = torch.randn(1, 2, 31, 33, 16)
    padded, widths = pad_to_multiple(x, 4)
    assert padded.shape[2:] == (32, 36, 16)
    assert widths == ((0, 1), (1, 2), (0, 0))
    assert torch.equal(crop_padding(padded, widths), x)
    torch.testing.assert_close(crop_padding(idwt3d(dwt3d(padded)), widths), x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(x, (2, 2))


def test_lll_scaling():
    coder = HaarWavelet3D(lll_scale=3.0)
    x = torch.full((1, 1, 4, 4, 4), 1.0)
    c = coder.encode(x)
    # constant 1 -> LLL = 8/sqrt(8) = 2*sqrt(2), divided by 3; all details zero
    torch.testing.assert_close(c[:, 0], torch.full_like(c[:, 0], 2 * 2**0.5 / 3))
    assert c[:, 1:].abs().max() < 1e-6
    torch.testing.assert_close(coder.decode(c), x)
    unscaled = HaarWavelet3D(lll_scale=1.0).encode(x)
    torch.testing.assert_close(unscaled, dwt3d(x))
    with pytest.raises(ValueError, match="lll_scale"):
        HaarWavelet3D(0.0)


def test_meta_tensor_input_gives_plain_coefficients():
    """An image's affine does not describe its half-size coefficients: the transforms return plain tensors."""
    from monai.data import MetaTensor

    x = MetaTensor(torch.randn(1, 1, 4, 6, 8), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    y = dwt3d(x)
    assert type(y) is torch.Tensor and type(idwt3d(y)) is torch.Tensor
    torch.testing.assert_close(y, dwt3d(x.as_tensor()), rtol=0, atol=1e-6)


def test_gradients_second_order():
    x = torch.randn(1, 2, 4, 2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dwt3d, (x,)) and torch.autograd.gradgradcheck(dwt3d, (x,))
    c = torch.randn(1, 8, 2, 3, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(idwt3d, (c,)) and torch.autograd.gradgradcheck(idwt3d, (c,))


def test_low_precision_agrees_with_float32():
    xb = torch.randn(1, 2, 4, 6, 8).to(torch.bfloat16)
    torch.testing.assert_close(dwt3d(xb).float(), dwt3d(xb.float()), rtol=0.02, atol=0.02)


def test_non_contiguous_input():
    base = torch.randn(1, 8, 12, 10, 6, generator=torch.Generator().manual_seed(2))
    x = base.permute(0, 1, 4, 3, 2)[:, ::2]  # (1, 4, 6, 10, 12), neither contiguous nor dense
    assert not x.is_contiguous()
    torch.testing.assert_close(dwt3d(x), dwt3d(x.contiguous()), rtol=0, atol=1e-5)
    y = dwt3d(x.contiguous()).transpose(3, 4)
    torch.testing.assert_close(idwt3d(y), idwt3d(y.contiguous()), rtol=0, atol=1e-5)


def test_outputs_are_on_the_input_device_whatever_the_default_device():
    x = torch.randn(1, 1, 4, 6, 8)
    with torch.device("meta"):  # as with torch.set_default_device("cuda"): the CPU input decides
        y = dwt3d(x)
        back = idwt3d(y)
    assert y.device.type == "cpu" and back.device.type == "cpu"
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factored_form_without_autograd_equals_the_matrix(dtype):
    """CPU float tensors that autograd does not record take the factored form (in place on the output)."""
    x = torch.randn(2, 3, 12, 10, 6, dtype=dtype, generator=torch.Generator().manual_seed(6))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    with torch.no_grad():
        y, back = dwt3d(x), idwt3d(dwt3d(x))
    recorded = dwt3d(x.requires_grad_())  # autograd records: the 8x8 matrix
    assert recorded.grad_fn is not None and y.grad_fn is None
    torch.testing.assert_close(y, recorded.detach(), rtol=0, atol=tol)
    torch.testing.assert_close(back, idwt3d(recorded).detach(), rtol=0, atol=tol)
    torch.testing.assert_close(back, x.detach(), rtol=0, atol=tol)
    for i, ch in ((0, 0), (1, 2)):
        ref = pywt.dwtn(x[i, ch].detach().double().numpy(), "haar")
        for k, key in enumerate(PYWT_KEYS):
            np.testing.assert_allclose(y[i, 8 * ch + k].double().numpy(), ref[key], rtol=0, atol=tol, err_msg=key)
    c = torch.randn(1, 8, 3, 5, 2, dtype=dtype)
    with torch.no_grad():
        coeffs = {key: c[0, k].numpy() for k, key in enumerate(PYWT_KEYS)}
        np.testing.assert_allclose(idwt3d(c)[0, 0].numpy(), pywt.idwtn(coeffs, "haar"), rtol=0, atol=tol)


@pytest.mark.parametrize("lll_scale", [3.0, 1.0])
def test_torchscript_equals_eager(lll_scale):
    coder = HaarWavelet3D(lll_scale)
    scripted = torch.jit.script(coder)
    x = torch.randn(2, 3, 8, 10, 12, generator=torch.Generator().manual_seed(7))
    c = coder.encode(x)
    assert torch.equal(scripted.encode(x), c) and torch.equal(scripted(x), coder(x))
    assert torch.equal(scripted.decode(c), coder.decode(c))
    xg, cg = x.clone().requires_grad_(), c.clone().requires_grad_()  # autograd records: the matrix form
    assert torch.equal(scripted.encode(xg), coder.encode(xg)) and torch.equal(scripted(xg), coder(xg))
    assert torch.equal(scripted.decode(cg), coder.decode(cg))
    with pytest.raises(torch.jit.Error, match="even spatial sizes"):
        scripted.encode(torch.zeros(1, 1, 7, 8, 8))


def test_image_space_is_scriptable():
    scripted = torch.jit.script(ImageSpace())
    x = torch.randn(2, 3, 8, 10, 12)
    assert torch.equal(scripted.encode(x), x) and torch.equal(scripted.decode(x), x) and torch.equal(scripted(x), x)
