"""Fréchet distance between Gaussians fitted to features, with streaming mean/covariance."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FeatureStatistics", "frechet_distance"]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (Heusel et al., 2017).

    ``tr((S1 S2)^(1/2))`` equals ``tr((S1^(1/2) S2 S1^(1/2))^(1/2))``, the trace of the square root of
    a symmetric PSD matrix: ``S1^(1/2)`` comes from ``eigh`` of ``S1``, then the eigenvalues of
    ``S1^(1/2) S2 S1^(1/2)`` (negatives from round-off clipped to 0) are square-rooted and summed.
    Real arithmetic in float64 throughout, no ``scipy.linalg.sqrtm`` and no complex parts.

    Args:
        mu1, mu2: (d,) means.
        sigma1, sigma2: (d, d) covariances.

    Returns:
        The distance (>= 0 up to round-off; clipped at 0).

    Raises:
        ValueError: shapes do not fit together.
    """
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}."
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    sqrt1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt1 @ s2 @ sqrt1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean), 0.0)


class FeatureStatistics:
    """Streaming mean and covariance of feature vectors (Chan et al. pairwise update, float64).

    Memory is O(d^2) whatever the number of samples. ``covariance`` uses ``N - 1`` (as ``np.cov``).

    Example:
        >>> stats = FeatureStatistics()
        >>> for x in np.random.default_rng(0).normal(size=(5, 3)):
        ...     _ = stats.update(x)
        >>> stats.n, stats.mean.shape, stats.covariance.shape
        (5, (3,), (3, 3))
    """

    def __init__(self) -> None:
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, features: np.ndarray | torch.Tensor) -> FeatureStatistics:
        """Add one feature vector (d,) or a batch (B, d)."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().double().numpy()
        x = np.asarray(features, np.float64)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"features must be (d,) or (B, d) with B >= 1; got shape {np.shape(features)}.")
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"feature size changed: had {self._mean.shape[0]}, got {x.shape[1]}.")
        nb = x.shape[0]
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self._mean is None:
            self.n, self._mean, self._m2 = nb, mean_b, m2_b
            return self
        n = self.n + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.n * nb / n)
        self.n = n
        return self

    def _check(self) -> None:
        if self.n < 2:
            raise ValueError(f"mean and covariance need at least 2 feature vectors; got {self.n}.")

    @property
    def mean(self) -> np.ndarray:
        self._check()
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        self._check()
        return self._m2 / (self.n - 1)

    def frechet_distance(self, other: FeatureStatistics) -> float:
        """Fréchet distance between this and ``other``'s Gaussians."""
        return frechet_distance(self.mean, self.covariance, other.mean, other.covariance)
