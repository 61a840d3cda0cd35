"""Metrics and standard errors as lm-evaluation-harness computes them."""
import math
from typing import Callable, Sequence

import numpy as np


def mean_stderr(values: Sequence[float]) -> float | None:
  """Standard error of a mean: sample standard deviation (n - 1) / sqrt(n) (the harness's
  `mean_stderr`); None for fewer than two values."""
  x = np.asarray(values, np.float64)
  if len(x) < 2:
    return None
  return float(x.std(ddof=1) / math.sqrt(len(x)))


def choose(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
  """(acc's pick, acc_norm's pick): argmax of the summed log-likelihoods, and of the
  log-likelihoods divided by each choice's length in characters; ties go to the first."""
  lls = np.asarray(lls, np.float64)
  lengths = np.asarray([float(len(c)) for c in choices])
  return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def bootstrap_stderr(metric: Callable[[np.ndarray], float], values: Sequence,
                     iters: int = 1000, seed: int = 0) -> float | None:
  """Standard deviation of `metric` over `iters` resamples of `values` (with replacement,
  fixed seed): the harness's bootstrap for metrics such as perplexity."""
  x = np.asarray(values)
  if len(x) < 2:
    return None
  rng = np.random.default_rng(seed)
  stats = [metric(x[rng.integers(0, len(x), len(x))]) for _ in range(iters)]
  return float(np.std(stats, ddof=1))
