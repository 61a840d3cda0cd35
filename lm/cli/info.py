"""lm-info: parameter count, training FLOPs per token and a per-module table of a model config.

  lm-info --gin_file=gin_configs/models/llama3_8b.gin [--seq_len=2048] [--gin.ModelConfig.X=...]

No weights are allocated: the parameter tree comes from `jax.eval_shape` of the model's init.
"""
import argparse
import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.cli.common import parse_args, parse_gin, run_main
from lm.errors import UserError
from lm.models.config import ModelConfig, flops_per_token, num_params
from lm.models.transformer import Transformer


def abstract_params(cfg: ModelConfig):
  """The model's parameter tree as ShapeDtypeStructs (nothing allocated)."""
  boxed = jax.eval_shape(lambda rng: Transformer(cfg).init(rng, jnp.zeros((1, 1), jnp.int32)),
                         jax.random.PRNGKey(0))
  return nn.meta.unbox(boxed)["params"]


def module_table(params) -> list[tuple[str, int, int]]:
  """(module, parameters per instance, instances) rows; layer_0..N-1 are folded into layer_*."""
  sizes = collections.OrderedDict()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    module = "/".join(str(getattr(k, "key", k)) for k in path[:-1][:2])
    sizes[module] = sizes.get(module, 0) + leaf.size
  rows = collections.OrderedDict()
  for module, size in sizes.items():
    folded = re.sub(r"^layer_\d+", "layer_*", module)
    per, n = rows.get(folded, (size, 0))
    rows[folded] = (per, n + 1)
  return [(name, per, n) for name, (per, n) in rows.items()]


def _human(n: float) -> str:
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.2f}{unit}"
  return f"{n:.0f}"


def _main(argv):
  parser = argparse.ArgumentParser(prog="lm-info", description=__doc__.split("\n")[0])
  parser.add_argument("--gin_file", action="append", default=[], help="gin config (repeatable)")
  parser.add_argument("--seq_len", type=int, default=None,
                      help="sequence length for FLOPs (default: min(max_len, 2048))")
  args, bindings = parse_args(parser, argv)
  if not args.gin_file:
    raise UserError("give at least one --gin_file")
  parse_gin(args.gin_file, bindings)
  try:
    cfg = ModelConfig()
  except ValueError as e:
    raise UserError(str(e)) from None
  seq_len = args.seq_len or min(cfg.max_len, 2048)
  params = abstract_params(cfg)
  total = sum(leaf.size for leaf in jax.tree.leaves(params))
  assert total == num_params(cfg), (total, num_params(cfg))  # the formula MFU relies on
  flops = flops_per_token(cfg, seq_len)
  print(f"params: {total}  ({_human(total)}; {_human(num_params(cfg, False))} without "
        "embeddings)")
  print(f"train FLOPs/token: {flops:.4g}  ({_human(flops)} at seq_len {seq_len}; fwd+bwd)")
  print(f"\n{'module':<28}{'params':>16}{'x':>5}{'total':>16}")
  for name, per, n in module_table(params):
    print(f"{name:<28}{per:>16,}{n:>5}{per * n:>16,}")


def main(argv=None):
  raise SystemExit(run_main(_main, argv))


if __name__ == "__main__":
  main()
