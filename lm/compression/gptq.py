"""GPTQ (Frantar et al. 2023): round-to-nearest with the rounding error of each input row
compensated by the rows not yet quantized, so the layer's outputs on the calibration inputs
move as little as possible.

For W [I, O] and H = sum over calibration tokens of x x^T [I, I] (x: the matrix's input), rows
are quantized in order; after row i, the remaining rows absorb its error through the upper
Cholesky factor U of H^-1 (dampened by 1 % of mean(diag H)):
  W[j] -= U[i, j] / U[i, i] * (W[i] - Q[i])   for j > i,
which minimises ||X W - X Q||^2 row by row (the OBS update). Scales are those of round-to-
nearest (lm.compression.quantize: symmetric, max |W| / qmax per output column of each group),
taken from the updated rows when a group starts. Statistics come from the float model in one
pass (every matrix sees float inputs), not layer by layer as in the paper's sequential variant.
Updates are applied in blocks of about 128 rows, whole groups (the paper's lazy batch): the
same result, fewer passes over W.
"""
import numpy as np

from lm.compression import quantize
from lm.compression.kernels import get_path, set_path


def _upper_cholesky_of_inverse(h_II: np.ndarray, damp: float) -> np.ndarray:
  h = h_II.astype(np.float64).copy()
  idx = np.arange(len(h))
  h[idx, idx] += damp * np.mean(np.diag(h))
  h_inv = np.linalg.inv(np.linalg.cholesky(h))  # L^-1, H^-1 = L^-T L^-1
  return np.linalg.cholesky(h_inv.T @ h_inv).T  # U, H^-1 = U^T U


def gptq_2d(w_IO: np.ndarray, h_II: np.ndarray, bits: int, group: int, damp: float = 0.01,
            block: int = 128) -> dict:
  """W [I, O] and H [I, I] -> {"q", "scale"} in quantize_2d's format (int4 packed)."""
  qmax = quantize.QMAX[bits]
  w = np.array(w_IO, np.float64)
  h = np.array(h_II, np.float64)
  dead = np.diag(h) == 0  # inputs that were always zero: any value is exact, use 0
  h[dead, dead] = 1
  w[dead] = 0
  u = _upper_cholesky_of_inverse(h, damp)
  i_size, o_size = w.shape
  if group < i_size:  # a group's rows must be up to date when its scale is taken
    block = group * max(1, block // group)
  q = np.zeros(w.shape, np.int8)
  scales = np.zeros((i_size // group, o_size), np.float32)
  for b0 in range(0, i_size, block):
    b1 = min(b0 + block, i_size)
    err = np.zeros((b1 - b0, o_size))
    for i in range(b0, b1):
      if i % group == 0:
        scales[i // group] = np.max(np.abs(w[i:i + group]), axis=0) / qmax
      scale = scales[i // group].astype(np.float64)
      safe = np.where(scale == 0, 1.0, scale)
      q[i] = np.clip(np.round(w[i] / safe), -qmax, qmax)
      err[i - b0] = (w[i] - q[i] * scale) / u[i, i]
      w[i + 1:b1] -= np.outer(u[i, i + 1:b1], err[i - b0])
    w[b1:] -= u[b0:b1, b1:].T @ err
  return {"q": np.asarray(quantize.pack_int4(q)) if bits == 4 else q, "scale": scales}


def gptq_params(params, cfg, scheme: str, group_size: int, skip, grams: dict):
  """quantize.quantize_params with GPTQ for every selected matrix that has calibration
  statistics in `grams` ({kernel path: [(layers,) I, I]}, calibration.input_stats(gram=True));
  the others (embedding tables that are only looked up) are rounded to nearest."""
  bits = quantize.SCHEMES[scheme]
  for k in quantize.selected_kernels(cfg, bits, skip):
    w_IO = np.asarray(k.as_2d(get_path(params, k.path)), np.float32)
    group = quantize.group_for(k.in_size, bits, group_size)
    if k.path not in grams:
      leaf = quantize.quantize_2d(w_IO, bits, group)
    elif k.lead:  # scanned layers: one matrix per layer
      per_layer = [gptq_2d(w, h, bits, group) for w, h in zip(w_IO, grams[k.path])]
      leaf = {name: np.stack([x[name] for x in per_layer]) for name in ("q", "scale")}
    else:
      leaf = gptq_2d(w_IO, grams[k.path], bits, group)
    params = set_path(params, k.path, leaf)
  return params
