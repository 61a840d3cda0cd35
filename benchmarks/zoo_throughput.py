"""Forward+backward throughput of the model zoo: step time, tokens/s and (on GPU/TPU) MFU.

  python benchmarks/zoo_throughput.py [--models gpt2_small,gpt2_124m,...] [--steps 5]
      [--batch 4 --seq_len 256] [--gin.ModelConfig.dtype="'bfloat16'"]

Times jit(value_and_grad(loss)) on synthetic tokens (no optimizer, no input pipeline), so the
figure is the model's own cost. FLOPs come from lm.models.config.flops_per_token (MaxText's
formula); MFU needs a known peak (lm.training.metrics.PEAK_FLOPS) and is left out on CPU.
"""
import argparse
import os
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np

from lm.cli.common import parse_args, parse_gin
from lm.models.config import ModelConfig, flops_per_token, num_params
from lm.models.transformer import Transformer
from lm.training.metrics import peak_flops_per_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (family, small config, ~125M config)
ZOO = [("gpt2", "gpt2_small", "gpt2_124m"), ("llama", "llama_small", "smollm_135m"),
       ("neox", "neox_small", "pythia_160m"), ("gptj-style", "gptj_small", None)]


def measure(cfg: ModelConfig, batch: int, seq_len: int, steps: int) -> float:
  """Median seconds of one jitted forward+backward step after a warm-up call."""
  model = Transformer(cfg)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, seq_len), jnp.int32))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, seq_len + 1), 0, cfg.vocab_size)

  @jax.jit
  def step(params, tokens):
    def loss(params):
      logits = model.apply(params, tokens[:, :-1])
      logz = jax.nn.logsumexp(logits, axis=-1)
      return jnp.mean(logz - jnp.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0])
    return jax.value_and_grad(loss)(params)

  jax.block_until_ready(step(params, tokens))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(step(params, tokens))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _config(name: str, bindings) -> ModelConfig:
  gin.clear_config()
  parse_gin([os.path.join(REPO, "gin_configs", "models", f"{name}.gin")], bindings)
  return ModelConfig()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", help="comma-separated gin names (default: the zoo table)")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--peak_flops", type=float, help="per-device peak FLOP/s for MFU")
  args, bindings = parse_args(parser, argv if argv is not None else sys.argv[1:])
  names = (args.models.split(",") if args.models
           else [n for _, small, big in ZOO for n in (small, big) if n])
  peak = peak_flops_per_device(args.peak_flops)
  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}; batch "
        f"{args.batch} x seq {args.seq_len}; forward+backward, median of {args.steps}")
  print(f"| model | params | ms/step | tokens/s | TFLOP/s |{' MFU |' if peak else ''}")
  print(f"|---|---|---|---|---|{'---|' if peak else ''}")
  for name in names:
    cfg = _config(name, bindings)
    seconds = measure(cfg, args.batch, args.seq_len, args.steps)
    tokens = args.batch * args.seq_len
    flops = flops_per_token(cfg, args.seq_len) * tokens / seconds
    mfu = f" {100 * flops / (peak * jax.device_count()):.1f} % |" if peak else ""
    print(f"| {name} | {num_params(cfg) / 1e6:.1f}M | {1000 * seconds:.1f} | "
          f"{tokens / seconds:,.0f} | {flops / 1e12:.3f} |{mfu}", flush=True)


if __name__ == "__main__":
  main()
