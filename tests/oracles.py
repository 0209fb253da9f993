"""Stand-in networks whose right answers are known, for sampler tests."""

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
