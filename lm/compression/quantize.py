"""lm-quantize: a model directory -> its quantized copy (lm.models.quantized's format), rounded
to nearest (rtn) or by GPTQ on calibration text (lm.compression.gptq)."""
import functools

import jax

from lm.compression.calibration import calibration_tokens, input_stats
from lm.compression.dirs import load_float
from lm.compression.gptq import gptq_params
from lm.errors import UserError
from lm.model_dir import check_new_dir, save_model_dir
from lm.models.kernels import find_kernels
from lm.models.quantized import SCHEMES, quantize_params, selected_kernels, skip_names


def param_bytes(params) -> int:
  """Bytes of every array in a param tree (quantized or not)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


METHODS = ("rtn", "gptq")


def quantize_dir(model_dir: str, out_dir: str, scheme: str, group_size: int = 128, skip=(),
                 step: int | None = None, overwrite: bool = False, method: str = "rtn",
                 calibration_task: str | None = None, calibration_rows: int = 64,
                 calibration_len: int | None = None) -> dict:
  """lm-quantize: writes out_dir, the quantized copy of model_dir's (latest or `step`)
  weights, rounded to nearest (rtn) or by GPTQ on calibration text (lm.compression.gptq);
  returns {"float_bytes", "quantized_bytes", "quantized": [matrix names]}."""
  if scheme not in SCHEMES:
    raise UserError(f"unknown --scheme {scheme!r} (int8 | int4)")
  if method not in METHODS:
    raise UserError(f"unknown --method {method!r} (rtn | gptq)")
  if method == "gptq" and not calibration_task:
    raise UserError("--method gptq needs --calibration_task (ppl:FILES or seqio:TASK)")
  if group_size < 1:
    raise UserError(f"--group_size must be >= 1, got {group_size}")
  check_new_dir(out_dir, overwrite, [model_dir])  # before the work, not only at the end
  model = load_float(model_dir, step)
  cfg, skip = model.config, tuple(s for s in skip if s)
  names = set().union(*(skip_names(k, cfg) for k in find_kernels(cfg)))
  unknown = [s for s in skip if s not in names]
  if unknown:
    examples = [n for n in ("embed", "unembed", "pos_embed", "attn", "mlp", "layer_0", "layers")
                if n in names]
    raise UserError(f"--skip {','.join(unknown)}: no matrix path of this model has such a "
                    f"component (e.g. {', '.join(examples)})")
  if method == "gptq":
    tokens = calibration_tokens(model, calibration_task, calibration_rows, calibration_len)
    grams = input_stats(cfg, model.params, tokens, gram=True)
    qparams = gptq_params(model.params, cfg, scheme, group_size, skip, grams)
  else:
    qparams = jax.jit(functools.partial(quantize_params, cfg=cfg, scheme=scheme,
                                        group_size=group_size, skip=skip))(model.params)
  meta = {"scheme": scheme, "group_size": group_size, "skip": list(skip), "method": method,
          "calibration_task": calibration_task if method == "gptq" else None}
  save_model_dir(out_dir, model.config, qparams, [model_dir], model.task, {"quantization": meta},
                 overwrite)
  return {"float_bytes": param_bytes(model.params), "quantized_bytes": param_bytes(qparams),
          "quantized": [k.name for k in selected_kernels(cfg, SCHEMES[scheme], skip)]}
