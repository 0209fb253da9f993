"""The one-pass C kernel of the Haar DWT/IDWT: same numbers and gradients as PyWavelets and the PyTorch path."""

import os
import subprocess
import sys

import numpy as np
import pytest
import pywt
import torch

from wdm_bundle.wavelets import PYWT_KEYS, dwt3d, idwt3d, native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the kernel cannot be built")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 2, 2, 2), (2, 3, 8, 6, 4), (1, 2, 6, 10, 14)])
def test_native_equals_pywavelets_and_torch_path(shape, dtype):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    y = native.dwt3d_native(x)
    torch.testing.assert_close(y, dwt3d(x, use_native=False), rtol=0, atol=tol)
    ref = pywt.dwtn(x[-1, -1].double().numpy(), "haar")
    for k, key in enumerate(PYWT_KEYS):
        np.testing.assert_allclose(y[-1, 8 * (shape[1] - 1) + k].double().numpy(), ref[key], rtol=0, atol=tol)
    back = native.idwt3d_native(y)
    torch.testing.assert_close(back, idwt3d(y, use_native=False), rtol=0, atol=tol)
    torch.testing.assert_close(back, x, rtol=0, atol=tol)


def _haar_steps(x):
    """The kernel's additions in its order, in x's dtype, one tensor op each: (..., D, H, W) -> 8 bands."""
    s = torch.tensor(0.35355339059327373, dtype=x.dtype)
    a, b, c, e = x[..., 0::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 0::2, :], x[..., 1::2, 1::2, :]
    lo = [r[..., 0::2] + r[..., 1::2] for r in (a, b, c, e)]
    hi = [r[..., 0::2] - r[..., 1::2] for r in (a, b, c, e)]
    z0 = [lo[0] + lo[1], hi[0] + hi[1], lo[0] - lo[1], hi[0] - hi[1]]
    z1 = [lo[2] + lo[3], hi[2] + hi[3], lo[2] - lo[3], hi[2] - hi[3]]
    return torch.stack([s * (p + q) for p, q in zip(z0, z1)] + [s * (p - q) for p, q in zip(z0, z1)], -4)


@pytest.mark.parametrize("w", [1, 3, 4, 5, 8, 11, 17])
def test_vector_and_scalar_columns_are_bit_identical(w):
    """float32 rows run 4 columns per SSE2 instruction plus a scalar tail: both must give the exact IEEE
    results of the same formula (w = output width: tails of 0-3 columns, rows shorter than one vector)."""
    x = torch.randn(2, 1, 4, 6, 2 * w, generator=torch.Generator().manual_seed(w))
    y = native.dwt3d_native(x)
    assert torch.equal(y, _haar_steps(x[:, 0]).reshape(y.shape))
    k = y.reshape(2, 8, 2, 3, w)
    s = torch.tensor(0.35355339059327373)
    zs = [k[:, j] + k[:, j + 4] for j in range(4)], [k[:, j] - k[:, j + 4] for j in range(4)]
    rows = []  # (z, y) = (0, 0), (0, 1), (1, 0), (1, 1): W-low, W-high pairs
    for z in zs:
        rows += [(z[0] + z[2], z[1] + z[3]), (z[0] - z[2], z[1] - z[3])]
    ref = torch.empty(2, 4, 6, 2 * w)
    for n, (lo, hi) in enumerate(rows):
        ref[:, n // 2::2, n % 2::2, 0::2], ref[:, n // 2::2, n % 2::2, 1::2] = s * (lo + hi), s * (lo - hi)
    assert torch.equal(native.idwt3d_native(y)[:, 0], ref)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/transparent_hugepage"), reason="no transparent huge pages")
def test_large_outputs_are_advised_as_huge_pages(monkeypatch):
    def vm_flags(t):
        p = t.data_ptr() + t.numel() * t.element_size() // 2  # the middle: inside the advised whole 2 MiB pages
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    inside = lo <= p < hi
                elif inside and line.startswith("VmFlags:"):
                    return line.split()[1:]
        raise AssertionError("mapping not found")

    x = torch.randn(1, 1, 256, 256, 256, generator=torch.Generator().manual_seed(5))  # 64 MiB
    y = native.dwt3d_native(x)
    assert "hg" in vm_flags(y)  # the kernel took the advice (x, torch's own memory, may share a mapping with it)
    back = native.idwt3d_native(y)
    assert "hg" in vm_flags(back)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(y[:, :, ::40, ::40], dwt3d(x, use_native=False)[:, :, ::40, ::40], rtol=0, atol=1e-5)

    calls, real = [], native._madvise()
    monkeypatch.setitem(native._state, "madvise", lambda start, length, advice: calls.append((start, length)) or
                        real(start, length, advice))
    y32 = native.dwt3d_native(x[:, :, :128])  # a 32 MiB output: the smallest advised
    (start, length), = calls
    assert start % (2 << 20) == 0 and length % (2 << 20) == 0 and length >= (28 << 20)
    assert y32.data_ptr() <= start and start + length <= y32.data_ptr() + (32 << 20)  # whole pages inside only
    native.dwt3d_native(x[:, :, :64], out=None)  # 16 MiB: left to the allocator
    native.dwt3d_native(x, out=torch.empty_like(y))  # the caller's memory: never advised
    assert len(calls) == 1
    off = subprocess.run([sys.executable, "-c", "from wdm_bundle.wavelets import native; print(native._madvise())"],
                         capture_output=True, text=True, env={**os.environ, "WDM_BUNDLE_HUGEPAGES": "0"}, timeout=120)
    assert off.stdout.strip() == "None", off.stderr


def test_default_path_is_native_on_cpu_float():
    x = torch.randn(1, 1, 4, 4, 4)
    assert native.supports(x) and native.supports(x.double())
    assert not native.supports(x.half()) and not native.supports(x.to(torch.bfloat16))
    assert type(dwt3d(x.requires_grad_()).grad_fn).__name__.startswith("_NativeDWT")
    # other dtypes take the PyTorch path and still agree
    xb = torch.randn(1, 2, 4, 6, 8).to(torch.bfloat16)
    torch.testing.assert_close(dwt3d(xb).float(), dwt3d(xb.float()), rtol=0.02, atol=0.02)


def test_non_contiguous_input():
    base = torch.randn(1, 8, 12, 10, 6, generator=torch.Generator().manual_seed(2))
    x = base.permute(0, 1, 4, 3, 2)[:, ::2]  # (1, 4, 6, 10, 12), neither contiguous nor dense
    assert not x.is_contiguous()
    torch.testing.assert_close(dwt3d(x), dwt3d(x.contiguous(), use_native=False), rtol=0, atol=1e-5)
    y = dwt3d(x.contiguous()).transpose(3, 4)
    torch.testing.assert_close(idwt3d(y), idwt3d(y.contiguous(), use_native=False), rtol=0, atol=1e-5)


def test_write_into_existing_tensor():
    x = torch.randn(2, 1, 6, 8, 4, generator=torch.Generator().manual_seed(4))
    y_buf, x_buf = torch.full((2, 8, 3, 4, 2), float("nan")), torch.full_like(x, float("nan"))
    y = native.dwt3d_native(x, out=y_buf)
    assert y is y_buf
    torch.testing.assert_close(y, dwt3d(x, use_native=False), rtol=0, atol=1e-6)
    assert native.idwt3d_native(y, out=x_buf) is x_buf
    torch.testing.assert_close(x_buf, x, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        native.dwt3d_native(x, out=torch.empty(2, 8, 3, 4, 3))
    with pytest.raises(ValueError, match="float64"):
        native.dwt3d_native(x.double(), out=y_buf)
    with pytest.raises(ValueError, match="non-contiguous"):
        native.idwt3d_native(y, out=torch.empty(2, 1, 4, 8, 6).transpose(2, 4))
    with pytest.raises(ValueError, match="in place"):
        native.idwt3d_native(y, out=y.view(2, 1, 6, 8, 4))


def test_outputs_are_cpu_tensors_whatever_the_default_device():
    x = torch.randn(1, 1, 4, 6, 8)
    with torch.device("meta"):  # as with torch.set_default_device("cuda"): the kernel must not get that memory
        y = native.dwt3d_native(x)
        back = native.idwt3d_native(y)
    assert y.device.type == "cpu" and back.device.type == "cpu"
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)


def test_threads_split_the_work_without_changing_it():
    x = torch.randn(2, 1, 64, 64, 48, generator=torch.Generator().manual_seed(3))  # above the one-thread limit
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_y, one_x = native.dwt3d_native(x), native.idwt3d_native(dwt3d(x, use_native=False))
        torch.set_num_threads(3)  # uneven split of 2 * 32 slabs
        torch.testing.assert_close(native.dwt3d_native(x), one_y, rtol=0, atol=0)
        torch.testing.assert_close(native.idwt3d_native(dwt3d(x, use_native=False)), one_x, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


def test_gradients_first_and_second_order():
    x = torch.randn(1, 2, 4, 2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dwt3d, (x,)) and torch.autograd.gradgradcheck(dwt3d, (x,))
    c = torch.randn(1, 8, 2, 3, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(idwt3d, (c,)) and torch.autograd.gradgradcheck(idwt3d, (c,))
    # same gradient as the PyTorch path for a non-linear loss
    x32 = torch.randn(1, 1, 8, 8, 8, requires_grad=True)
    g_native, = torch.autograd.grad(dwt3d(x32).pow(3).sum(), x32)
    g_torch, = torch.autograd.grad(dwt3d(x32, use_native=False).pow(3).sum(), x32)
    torch.testing.assert_close(g_native, g_torch, rtol=1e-5, atol=1e-5)


def _probe(tmp_path, **env):
    code = ("import torch; from wdm_bundle.wavelets import native, dwt3d; x = torch.randn(1, 1, 4, 4, 4); "
            "print(native.available(), float((dwt3d(x) - dwt3d(x, use_native=False)).abs().max()))")
    full = {**os.environ, "WDM_BUNDLE_CACHE": str(tmp_path / "cache"), **env}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)
    assert run.returncode == 0, run.stderr
    ok, diff = run.stdout.split()
    return ok == "True", float(diff), run.stderr


def test_fresh_cache_builds_and_fallbacks_still_work(tmp_path):
    ok, diff, _ = _probe(tmp_path)
    assert ok and diff < 1e-6 and list((tmp_path / "cache").glob("haar_kernel_*.so"))
    ok, diff, _ = _probe(tmp_path / "off", WDM_BUNDLE_NATIVE_HAAR="0")  # switched off: PyTorch path
    assert not ok and diff == 0.0 and not (tmp_path / "off" / "cache").exists()
    ok, diff, err = _probe(tmp_path / "broken", CC="/bin/false")  # a compiler that fails: warn, PyTorch path
    assert not ok and diff == 0.0 and "could not build the native Haar kernel" in err


def _dwt_in_child(x):
    y = native.dwt3d_native(x).numpy()  # numpy: a tensor result would go through torch's shared-memory pickling
    return y, torch.get_num_threads(), native._state["pool_key"][1] == os.getpid()


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_works_in_a_forked_child():
    """A DataLoader-like fork of a process whose thread pool exists but has no threads in the child."""
    import multiprocessing as mp

    x = torch.randn(1, 1, 64, 64, 64)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        native.dwt3d_native(x)  # the parent's pool now exists
        with mp.get_context("fork").Pool(1) as pool:
            y, threads, own_pool = pool.apply_async(_dwt_in_child, (x,)).get(timeout=120)
    finally:
        torch.set_num_threads(before)
    assert threads == 2 and own_pool  # the child split the work over a pool of its own
    torch.testing.assert_close(torch.from_numpy(y), dwt3d(x, use_native=False), rtol=0, atol=1e-5)
