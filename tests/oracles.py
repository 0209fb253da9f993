"""Stand-in networks whose right answers are known, for sampler tests."""

import torch
from torch import nn

from wdm_bundle.wavelets import HaarWavelet3D


class Oracle(nn.Module):
    """Predicts the same clean coefficients (B, 8, d, h, w) whatever the input: an x0-predicting network
    that is always right, so sampling must return them exactly."""

    def __init__(self, target_coeffs):
        super().__init__()
        self.wavelet = HaarWavelet3D(3.0)
        self.target = target_coeffs
        self.calls = 0

    def forward(self, x, timesteps, context=None):
        self.calls += 1
        assert timesteps.shape == (x.shape[0],)
        return self.target.expand(x.shape[0], -1, -1, -1, -1)


class AffineOracle(nn.Module):
    """An x0-predicting stand-in whose x0 depends on its input, so the sampler's mean, variance and noise all
    reach the final sample: x0 = target + (0.2 + 0.2 t/T) x_t [+ 0.1 c_1 - 0.05 c_3] on (B, 8, d, h, w),
    x_t being the first 8 input channels and c_k the k-th 8 condition channels after them (cWDM)."""

    def __init__(self, target_coeffs, num_train_timesteps=1000):
        super().__init__()
        self.wavelet = HaarWavelet3D(3.0)
        self.target = target_coeffs
        self.num_train_timesteps = num_train_timesteps
        self.calls = 0

    @staticmethod
    def _x0(target, x, gain):
        x0 = target + gain * x[:, :8]
        if x.shape[1] > 8:
            x0 = x0 + 0.1 * x[:, 8:16] - 0.05 * x[:, 24:32]
        return x0

    def forward(self, x, timesteps, context=None):
        self.calls += 1
        assert timesteps.shape == (x.shape[0],)
        gain = 0.2 + 0.2 * timesteps.float() / self.num_train_timesteps
        return self._x0(self.target, x, gain.reshape(-1, 1, 1, 1, 1))

    def reference(self, x, t):
        """The same x0 of a float64 numpy input (B, 8[+24], d, h, w) at integer step t, in float64."""
        return self._x0(self.target.double().numpy(), x, 0.2 + 0.2 * t / self.num_train_timesteps)


class ConditionEcho(nn.Module):
    """A cWDM network that returns the (normalised, framed) condition coefficients of contrast slot ``source``
    unchanged: the identity oracle of the synthesis path. Input (B, 8 + 8K + K, d, h, w) of the unified model
    (x_t, the K contrast slots, the K target flags); output (B, 8, d, h, w)."""

    out_channels = 8

    def __init__(self, source=0, multiple=2):
        super().__init__()
        self.wavelet = HaarWavelet3D(3.0)
        self.source = source
        self.image_size_multiple = multiple
        self.anchor = nn.Parameter(torch.zeros(1))  # a state_dict to save and load like a real model

    def check_image_size(self, size, name="image"):
        assert all(int(s) % self.image_size_multiple == 0 for s in size), (name, size)

    def forward(self, x, timesteps, context=None):
        return x[:, 8 + 8 * self.source : 16 + 8 * self.source]
