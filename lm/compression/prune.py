"""Pruning dense kernels to exact zeros: magnitude or Wanda scores, unstructured or 2:4.

Every DenseGeneral kernel inside the layers is pruned (attention q/k/v/out, MLP); embeddings
and the output projection are not (as in Wanda). Each kernel is viewed as W [(layers,) I, O]:
  score: magnitude |W|, or Wanda |W| * ||X_i||_2 with X_i the i-th input feature of that kernel
    over the calibration tokens (Sun et al. 2023);
  unstructured: the round(sparsity * n) lowest scores are zeroed: over the whole matrix for
    magnitude, within each output column for Wanda (its comparison group);
  2:4: in every group of 4 consecutive inputs of a column, the 2 lowest scores are zeroed.
Ties go to the earlier index, so the counts are exact. Scanned layers are pruned per layer.
"""
import numpy as np

from lm.models.kernels import Kernel, find_kernels, get_path, set_path
from lm.errors import UserError

PATTERNS = ("unstructured", "2:4")
METHODS = ("magnitude", "wanda")


def prunable_kernels(cfg) -> list[Kernel]:
  """The dense kernels of the layers (not embeddings, not the output projection)."""
  return [k for k in find_kernels(cfg) if not k.is_embedding and k.path[0] != "unembed"]


def _lowest(scores_GN, k: int):
  """Boolean [G, N]: True at the k lowest entries of each row (stable: ties to lower index)."""
  order = np.argsort(scores_GN, axis=-1, kind="stable")
  pruned = np.zeros(scores_GN.shape, bool)
  np.put_along_axis(pruned, order[:, :k], True, axis=-1)
  return pruned


def keep_mask(scores_IO: np.ndarray, sparsity: float, pattern: str, per_column: bool):
  """Boolean keep-mask [..., I, O] of scores [..., I, O] (see the module docstring)."""
  *lead, i, o = scores_IO.shape
  s = scores_IO.reshape(-1, i, o)
  if pattern == "2:4":
    groups = np.swapaxes(s, 1, 2).reshape(-1, 4)  # [layers * O * I/4, 4]
    pruned = _lowest(groups, 2).reshape(s.shape[0], o, i)
    pruned = np.swapaxes(pruned, 1, 2)
  elif per_column:
    cols = np.swapaxes(s, 1, 2).reshape(-1, i)
    pruned = np.swapaxes(_lowest(cols, round(sparsity * i)).reshape(s.shape[0], o, i), 1, 2)
  else:
    pruned = _lowest(s.reshape(s.shape[0], -1), round(sparsity * i * o)).reshape(s.shape)
  return ~pruned.reshape(scores_IO.shape)


def check_args(sparsity: float, pattern: str, method: str):
  if pattern not in PATTERNS:
    raise UserError(f"unknown --pattern {pattern!r} (unstructured | 2:4)")
  if method not in METHODS:
    raise UserError(f"unknown --method {method!r} (magnitude | wanda)")
  if pattern == "2:4" and sparsity != 0.5:
    raise UserError(f"--pattern 2:4 means --sparsity 0.5, got {sparsity}")
  if not 0 <= sparsity < 1:
    raise UserError(f"--sparsity must be in [0, 1), got {sparsity}")


def prune_params(params, cfg, sparsity: float, pattern: str, method: str = "magnitude",
                 input_sq_norms: dict | None = None):
  """(params with exact zeros, {kernel name: fraction of zeros}).

  input_sq_norms (Wanda): {kernel path: sum over calibration tokens of x_i^2, [(layers,) I]}.
  """
  check_args(sparsity, pattern, method)
  sparsities = {}
  for k in prunable_kernels(cfg):
    if pattern == "2:4" and k.in_size % 4:
      raise UserError(f"{k.name}: input size {k.in_size} is not a multiple of 4 (2:4)")
    w = get_path(params, k.path)
    w_IO = np.asarray(k.as_2d(w), np.float32)
    scores_IO = np.abs(w_IO)
    if method == "wanda":
      scores_IO = scores_IO * np.sqrt(np.asarray(input_sq_norms[k.path]))[..., :, None]
    keep_IO = keep_mask(scores_IO, sparsity, pattern, per_column=method == "wanda")
    pruned = np.asarray(k.from_2d(np.where(keep_IO, w_IO, 0)), dtype=w.dtype)
    params = set_path(params, k.path, pruned)
    sparsities[k.name] = float(np.mean(pruned == 0))
  return params, sparsities


def prune_dir(model_dir: str, out_dir: str, sparsity: float, pattern: str,
              method: str = "magnitude", calibration_task: str | None = None,
              calibration_rows: int = 64, calibration_len: int | None = None,
              step: int | None = None, overwrite: bool = False) -> dict:
  """lm-prune: writes out_dir, a normal model dir with model_dir's weights pruned; its
  model.json's "pruning" entry lists the kernels, which lm-train's init_from keeps at zero.
  Returns {kernel name: fraction of zeros}."""
  from lm.compression.calibration import calibration_tokens, input_stats
  from lm.compression.dirs import load_float
  from lm.model_dir import check_new_dir, save_model_dir
  check_args(sparsity, pattern, method)
  if method == "wanda" and not calibration_task:
    raise UserError("--method wanda needs --calibration_task (ppl:FILES or seqio:TASK)")
  check_new_dir(out_dir, overwrite, [model_dir])  # before the work, not only at the end
  model = load_float(model_dir, step)
  norms = None
  if method == "wanda":
    tokens = calibration_tokens(model, calibration_task, calibration_rows, calibration_len)
    norms = input_stats(model.config, model.params, tokens)
  params, sparsities = prune_params(model.params, model.config, sparsity, pattern, method,
                                    norms)
  entry = {"sparsity": sparsity, "pattern": pattern, "method": method,
           "calibration_task": calibration_task if method == "wanda" else None,
           "kernels": sorted(sparsities)}
  save_model_dir(out_dir, model.config, params, [model_dir], model.task, {"pruning": entry},
                 overwrite)
  return sparsities
