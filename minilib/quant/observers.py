"""Calibration observers: choose the clipping range ``[lo, hi]`` of an activation from example data.

Weights are known in advance, so their range is simply their min and max. Activations change with
every input, so *static* quantization runs a few calibration batches, watches the values and fixes a
range. Three classic choices:

- :class:`MinMaxObserver` — the smallest and largest value seen. Nothing is clipped, but one outlier
  stretches the grid: with ``max|x| = 60`` and 8 bits the step is ``60/127 ≈ 0.47``, so every ordinary
  value near 0 is rounded coarsely (the problem LLM.int8, 2022, found in large Transformers).
- :class:`PercentileObserver` — the ``p``-th percentile (e.g. 99.99 %): clip the rare outliers to get a
  finer grid for everything else.
- :class:`MSEObserver` — search the clipping range that minimises the mean squared error
  ``E[(x − x̂)²]`` on the observed values: the best trade-off between clipping error and rounding error.

Usage::

    obs = PercentileObserver(99.9)
    for batch in calibration_batches:
        obs.update(activation(batch))
    lo, hi = obs.range(bits=8, symmetric=False)
    qx = quantize(x, bits=8, symmetric=False, clip=(lo, hi))
"""
from __future__ import annotations

import torch

from minilib.quant.affine import check_bits, dequantize, quantize


class Observer:
    """Base class: records the running min/max and a random sample of the values it has seen.

    max_samples: how many values to keep for percentile/MSE search (sampled uniformly, fixed seed).
    """

    def __init__(self, max_samples: int = 2**20):
        self.max_samples = max_samples
        self.min = self.max = None
        self._samples: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(0)

    def update(self, x: torch.Tensor) -> None:
        """Observe one batch of activations (any shape)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"observers watch floating-point tensors, got {getattr(x, 'dtype', type(x).__name__)}")
        flat = x.detach().float().flatten().cpu()
        self.min = flat.min() if self.min is None else torch.minimum(self.min, flat.min())
        self.max = flat.max() if self.max is None else torch.maximum(self.max, flat.max())
        if flat.numel() > self.max_samples:
            flat = flat[torch.randint(flat.numel(), (self.max_samples,), generator=self._generator)]
        self._samples.append(flat)

    @property
    def samples(self) -> torch.Tensor:
        """The kept values, at most ``max_samples`` of them (a random subset when more were seen)."""
        self._check_seen()
        values = torch.cat(self._samples)
        if values.numel() > self.max_samples:
            values = values[torch.randint(values.numel(), (self.max_samples,), generator=self._generator)]
        self._samples = [values]
        return values

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        """The clipping range ``(lo, hi)`` this observer proposes for ``bits``-bit quantization."""
        raise NotImplementedError

    def _check_seen(self) -> None:
        if self.min is None:
            raise ValueError(f"{type(self).__name__} has seen no data: call update(x) on calibration batches first")


class MinMaxObserver(Observer):
    """``[min, max]`` of everything seen: never clips, but outliers stretch the grid."""

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        check_bits(bits)
        self._check_seen()
        return self.min.item(), self.max.item()


class PercentileObserver(Observer):
    """``[(100 − p)-th percentile, p-th percentile]`` of the values seen (or ``±`` the p-th percentile of ``|x|`` if symmetric)."""

    def __init__(self, percentile: float = 99.99, max_samples: int = 2**20):
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        super().__init__(max_samples)
        self.percentile = percentile

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        check_bits(bits)
        p = self.percentile / 100
        if symmetric:
            bound = torch.quantile(self.samples.abs(), p).item()
            return -bound, bound
        return torch.quantile(self.samples, 1 - p).item(), torch.quantile(self.samples, p).item()


class MSEObserver(Observer):
    """The range ``α · [min, max]`` (α from a grid in (0, 1]) whose quantization error ``mean((x − x̂)²)`` is smallest."""

    def __init__(self, n_candidates: int = 100, max_samples: int = 2**18):
        super().__init__(max_samples)
        self.n_candidates = n_candidates

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        check_bits(bits)
        values = self.samples  # checks that data was seen
        lo, hi = self.min.item(), self.max.item()
        best_error, best_range = float("inf"), (lo, hi)
        for alpha in torch.linspace(1.0 / self.n_candidates, 1.0, self.n_candidates).tolist():
            clip = (alpha * lo, alpha * hi)
            error = (values - dequantize(quantize(values, bits, symmetric, clip=clip))).pow(2).mean().item()
            if error < best_error:
                best_error, best_range = error, clip
        return best_range
