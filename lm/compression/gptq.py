"""GPTQ (Frantar et al. 2023): round-to-nearest with the rounding error of each input row
compensated by the rows not yet quantized, so the layer's outputs on the calibration inputs
move as little as possible.

For W [I, O] and H = sum over calibration tokens of x x^T [I, I] (x: the matrix's input), rows
are quantized in order; after row i, the remaining rows absorb its error through the upper
Cholesky factor U of H^-1 (dampened by 1 % of mean(diag H)):
  W[j] -= U[i, j] / U[i, i] * (W[i] - Q[i])   for j > i,
which minimises ||X W - X Q||^2 row by row (the OBS update). Scales are those of round-to-
nearest's format (lm.models.quantized: symmetric, one scale per output column of each
group of consecutive input rows). By default rows go in order of decreasing H diagonal
(act-order: the most active inputs first, while the most rows remain to absorb their error),
so each group's scale is fixed beforehand from the float weights (static groups), chosen
among max |W| x (1, 0.95, ..., 0.5) / qmax by its rounding error. Statistics come from the
float model in one pass (every matrix sees float inputs), not layer by layer as in the paper's
sequential variant. Updates are applied in blocks of about 128 rows (the paper's lazy batch):
the same result, fewer passes over W.
"""
import numpy as np

from lm.models import quantized
from lm.models.kernels import get_path, set_path


def _upper_cholesky_of_inverse(h_II: np.ndarray, damp: float) -> np.ndarray:
  h = h_II.astype(np.float64).copy()
  idx = np.arange(len(h))
  h[idx, idx] += damp * np.mean(np.diag(h))
  h_inv = np.linalg.inv(np.linalg.cholesky(h))  # L^-1, H^-1 = L^-T L^-1
  return np.linalg.cholesky(h_inv.T @ h_inv).T  # U, H^-1 = U^T U


def _round(w, scale, qmax: int):
  """Round-to-nearest integers of w on the grid `scale` (a zero scale: a zero column)."""
  return np.clip(np.round(w / np.where(scale == 0, 1.0, scale)), -qmax, qmax)


def _group_scales(w_gO: np.ndarray, qmax: int, clip: bool) -> np.ndarray:
  """Per-column scales of a group of rows: max |w| / qmax, or with `clip` the scale among
  max |w| x (1, 0.95, ..., 0.5) / qmax whose round-to-nearest squared error is smallest."""
  ratios = np.linspace(1.0, 0.5, 11) if clip else np.ones(1)
  scales_RO = np.max(np.abs(w_gO), axis=0) * ratios[:, None] / qmax
  errors_RO = np.stack([np.sum((w_gO - _round(w_gO, s, qmax) * s) ** 2, axis=0)
                        for s in scales_RO])
  return np.take_along_axis(scales_RO, np.argmin(errors_RO, axis=0)[None], axis=0)[0]


def gptq_2d(w_IO: np.ndarray, h_II: np.ndarray, bits: int, group: int, damp: float = 0.01,
            block: int = 128, act_order: bool = True, clip: bool = True) -> dict:
  """W [I, O] and H [I, I] -> {"q", "scale"} in quantize_2d's format (int4 packed).

  act_order: quantize rows by decreasing H diagonal (the most active inputs first), with each
  group's scales then taken from the float weights before any update (static groups, so the
  stored layout is unchanged); clip: choose each scale by _group_scales' error search."""
  qmax = quantized.QMAX[bits]
  w = np.array(w_IO, np.float64)
  h = np.array(h_II, np.float64)
  dead = np.diag(h) == 0  # inputs that were always zero: any value is exact, use 0
  h[dead, dead] = 1
  w[dead] = 0
  i_size, o_size = w.shape
  scales = np.zeros((i_size // group, o_size), np.float32)
  order = np.arange(i_size)
  if act_order:
    for g in range(i_size // group):
      scales[g] = _group_scales(w[g * group:(g + 1) * group], qmax, clip)
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[order], h[order][:, order]
  elif group < i_size:  # a group's rows must be up to date when its scale is taken
    block = group * max(1, block // group)
  u = _upper_cholesky_of_inverse(h, damp)
  q = np.zeros(w.shape, np.int8)
  for b0 in range(0, i_size, block):
    b1 = min(b0 + block, i_size)
    err = np.zeros((b1 - b0, o_size))
    for i in range(b0, b1):
      row = order[i]  # the row's index in W's own order
      if not act_order and i % group == 0:
        scales[i // group] = _group_scales(w[i:i + group], qmax, clip)
      scale = scales[row // group].astype(np.float64)
      q[row] = _round(w[i], scale, qmax)
      err[i - b0] = (w[i] - q[row] * scale) / u[i, i]
      w[i + 1:b1] -= np.outer(u[i, i + 1:b1], err[i - b0])
    w[b1:] -= u[b0:b1, b1:].T @ err
  return {"q": np.asarray(quantized.pack_int4(q)) if bits == 4 else q, "scale": scales}


def gptq_params(params, cfg, scheme: str, group_size: int, skip, grams: dict):
  """quantized.quantize_params with GPTQ for every selected matrix that has calibration
  statistics in `grams` ({kernel path: [(layers,) I, I]}, calibration.input_stats(gram=True));
  the others (embedding tables that are only looked up) are rounded to nearest."""
  bits = quantized.SCHEMES[scheme]
  for k in quantized.selected_kernels(cfg, bits, skip):
    w_IO = np.asarray(k.as_2d(get_path(params, k.path)), np.float32)
    group = quantized.group_for(k.in_size, bits, group_size)
    if k.path not in grams:
      leaf = quantized.quantize_2d(w_IO, bits, group)
    elif k.lead:  # scanned layers: one matrix per layer
      per_layer = [gptq_2d(w, h, bits, group) for w, h in zip(w_IO, grams[k.path])]
      leaf = {name: np.stack([x[name] for x in per_layer]) for name in ("q", "scale")}
    else:
      leaf = gptq_2d(w_IO, grams[k.path], bits, group)
    params = set_path(params, k.path, leaf)
  return params
