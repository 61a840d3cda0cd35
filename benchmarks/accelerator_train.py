"""Training throughput on GPUs/TPUs: Llama 3.2 1B (or GPT-2 124M) shapes, FSDP over all devices.

  python benchmarks/accelerator_train.py [--model llama3_2_1b|gpt2_124m] [--per_device_batch N]
      [--seq_len L] [--remat none|full|save_dots] [--warmup 3] [--steps 20]
      [--peak_flops F] [--gin.ModelConfig.NAME=value ...]
  python benchmarks/accelerator_train.py --smoke   # tiny shapes on CPU, a few seconds

Random weights and synthetic random tokens (no data is read, so neither lm.data nor TensorFlow is
imported); bf16 compute with fp32 master weights and AdamW states; attention through
jax.nn.dot_product_attention (attention_backend='xla': cuDNN's fused kernel on GPUs, XLA's
elsewhere; the table says which one the compiled step holds); mesh (data, fsdp, tensor) =
(1, devices, 1). The state and the jitted step are the project's own (create_state,
state_shardings, train_step), jitted with shardings as lm.training.loop does. Each measured
step is timed from its dispatch to the end of its outputs (host dispatch + device wait); the
median is the figure. FLOPs: lm.models.config.flops_per_token (MaxText's convention); MFU
against lm.training.metrics.PEAK_FLOPS, 'n/a' where the device's peak is unknown (CPUs).
"""
import argparse
import functools
import os
import sys
import time

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lm.cli.common import parse_args, parse_gin, run_main
from lm.errors import UserError
from lm.models.config import ModelConfig, flops_per_token
from lm.models.transformer import Transformer
from lm.sharding import (DEFAULT_RULES, batch_sharding, check_divisible, check_model_divisible,
                         global_batch, make_mesh, use_mesh)
from lm.training.metrics import peak_flops_per_device, throughput_scalars
from lm.training.optimizers import OptimizerConfig, make_optimizer
from lm.training.state import create_state, state_shardings
from lm.training.step import LossConfig, train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per model: (per-device batch, seq len, gin bindings, smoke's extra bindings). Llama 3.2 1B
# at 8 x 2048 per device (16k tokens) is meant to fill an 80 GB H100 with save_dots remat (the
# gin file's): ~20 GB of fp32 params, grads and AdamW moments, ~15 GB of saved activations,
# ~20 GB for the fp32 logits of 128k vocabulary rows and their gradient (an estimate: never
# run on one yet). GPT-2 124M: nanoGPT's 16 x 1024, vocabulary padded to 50,304 rows.
MODELS = {"llama3_2_1b": (8, 2048, [], ["ModelConfig.num_kv_heads = 2"]),
          "gpt2_124m": (16, 1024, ["ModelConfig.vocab_pad_multiple = 128"], [])}
PRECISION = ["ModelConfig.dtype = 'bfloat16'", "ModelConfig.param_dtype = 'float32'",
             "ModelConfig.attention_backend = 'xla'"]
SMOKE = ["ModelConfig.num_layers = 2", "ModelConfig.d_model = 64", "ModelConfig.num_heads = 4",
         "ModelConfig.head_dim = 16", "ModelConfig.mlp_dim = 128", "ModelConfig.vocab_size = 256",
         "ModelConfig.max_len = 32"]


def model_config(name: str, smoke: bool, remat: str | None, bindings) -> ModelConfig:
  """The gin file's model with this benchmark's precision (and smoke shapes), then --gin.*."""
  _, _, model_bindings, smoke_bindings = MODELS[name]
  extra = model_bindings + PRECISION + (SMOKE + smoke_bindings if smoke else [])
  extra += [f"ModelConfig.remat = '{remat}'"] if remat else []
  gin.clear_config()
  parse_gin([os.path.join(REPO, "gin_configs", "models", f"{name}.gin")], extra + list(bindings))
  return ModelConfig()


def synthetic_batch(rows: int, seq_len: int, vocab_size: int) -> dict[str, np.ndarray]:
  """Uniform random tokens: every position a target of weight 1."""
  tokens = np.random.default_rng(0).integers(0, vocab_size, (rows, seq_len + 1), np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "weights": np.ones((rows, seq_len), np.float32)}


def attention_implementation(compiled_text: str) -> str:
  """Which attention the compiled step runs: cuDNN's fused kernel (a custom call) or XLA's."""
  return "cudnn (fused)" if "__cudnn$fmha" in compiled_text else "xla"


def peak_memory_bytes() -> int | None:
  """The largest peak_bytes_in_use over the local devices; None where not reported (CPU)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def _run(step, state, batch):
  """One step: (state, metrics, host seconds to dispatch it, seconds waiting for the device)."""
  start = time.perf_counter()
  state, metrics = step(state, batch)
  dispatched = time.perf_counter()
  jax.block_until_ready((state, metrics))
  return state, metrics, dispatched - start, time.perf_counter() - dispatched


def benchmark(name: str, cfg: ModelConfig, per_device_batch: int, seq_len: int, warmup: int,
              steps: int, peak: float | None) -> dict[str, str]:
  """Builds the state and the step on a (1, devices, 1) mesh, times them: the table's rows."""
  mesh = make_mesh((1, -1, 1))
  n = mesh.devices.size
  rows = per_device_batch * n
  check_divisible(mesh, rows, cfg.num_heads, cfg.kv_heads)
  check_model_divisible(mesh, cfg)
  if cfg.positions == "learned" and seq_len > cfg.max_len:
    raise UserError(f"--seq_len={seq_len} exceeds the model's max_len={cfg.max_len}")
  model = Transformer(cfg)
  tx = make_optimizer(OptimizerConfig(), warmup + steps)
  with use_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    start = time.perf_counter()
    shardings = state_shardings(model, tx, mesh, seq_len)
    state = jax.block_until_ready(create_state(model, tx, shardings, seq_len, seed=0))
    init_s = time.perf_counter() - start
    batch = global_batch(mesh, synthetic_batch(rows, seq_len, cfg.vocab_size))
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, loss_cfg=LossConfig()),
                   in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
    try:
      start = time.perf_counter()
      compiled = step.lower(state, batch).compile()
      compile_s = time.perf_counter() - start
      attention = attention_implementation(compiled.as_text())
      print(f"attention: {attention} (attention_backend={cfg.attention_backend!r}, "
            f"{jax.default_backend()})", flush=True)
      state, metrics, dispatch, wait = _run(compiled, state, batch)
      first_ms = 1000 * (dispatch + wait)
      for _ in range(warmup - 1):
        state, metrics, _, _ = _run(compiled, state, batch)
      timings = []
      for _ in range(steps):
        state, metrics, dispatch, wait = _run(compiled, state, batch)
        timings.append((dispatch, wait))
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      raise UserError(f"out of device memory at --per_device_batch={per_device_batch}: try a "
                      "smaller one, or --remat=full") from None
  dispatch_s, wait_s = np.median(np.array(timings), axis=0)
  step_s = float(np.median([d + w for d, w in timings]))
  tokens = rows * seq_len
  rates = throughput_scalars(1, step_s, tokens, flops_per_token(cfg, seq_len) * tokens, peak, n)
  memory = peak_memory_bytes()
  device = jax.devices()[0]
  return {
      "model": f"{name}: {cfg.num_layers} layers, d={cfg.d_model}, {cfg.num_heads}/"
               f"{cfg.kv_heads} heads, mlp {cfg.mlp_dim} {cfg.activation}, "
               f"vocab {cfg.padded_vocab_size}",
      "params": f"{sum(x.size for x in jax.tree.leaves(state.params)):,}",  # as built
      "devices": f"{n} (mesh data, fsdp, tensor = 1, {n}, 1)",
      "device kind": f"{device.platform} {device.device_kind}",
      "precision": f"compute {cfg.dtype}, params {cfg.param_dtype}",
      "attention": attention,
      "remat": cfg.remat,
      "global batch": f"{rows} ({per_device_batch} per device)",
      "seq len": str(seq_len),
      "step time median (ms)": f"{1000 * step_s:.1f}",
      "tokens/s/device": f"{rates['train/tokens_per_sec'] / n:,.0f}",
      "achieved TFLOP/s/device": f"{rates['train/gflops_per_sec'] / 1e3:.3f}",
      "MFU": f"{100 * rates['train/mfu']:.1f} %" if "train/mfu" in rates else "n/a",
      "peak memory": f"{memory / 2**30:.2f} GiB" if memory is not None else "n/a",
      "loss (last step)": f"{float(metrics['loss']):.4f}",
      "init state (s)": f"{init_s:.2f}",
      "compile (s)": f"{compile_s:.2f}",
      "first step (ms)": f"{first_ms:.1f}",
      "steady-state median (ms)": f"{1000 * step_s:.1f} over {steps} steps after {warmup}",
      "host dispatch median (ms)": f"{1000 * dispatch_s:.2f}",
      "device wait median (ms)": f"{1000 * wait_s:.1f}",
  }


def _main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="llama3_2_1b")
  parser.add_argument("--per_device_batch", type=int, help="rows per device (default: per model)")
  parser.add_argument("--seq_len", type=int, help="tokens per row (default: per model)")
  parser.add_argument("--remat", choices=("none", "full", "save_dots"),
                      help="default: the model's gin file (llama3_2_1b save_dots, gpt2_124m none)")
  parser.add_argument("--warmup", type=int, help="steps before the measured ones (>= 1)")
  parser.add_argument("--steps", type=int, help="measured steps")
  parser.add_argument("--peak_flops", type=float, help="per-device peak FLOP/s for MFU")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes (2 layers, d=64, seq 32, batch 2 per device), for CPU")
  args, bindings = parse_args(parser, argv)
  batch, seq_len = (2, 32) if args.smoke else MODELS[args.model][:2]
  default = lambda value, otherwise: otherwise if value is None else value
  per_device_batch = default(args.per_device_batch, batch)
  seq_len = default(args.seq_len, seq_len)
  warmup = default(args.warmup, 1 if args.smoke else 3)
  steps = default(args.steps, 3 if args.smoke else 20)
  if per_device_batch < 1 or seq_len < 1 or warmup < 1 or steps < 1:
    raise UserError("--per_device_batch, --seq_len, --warmup and --steps must be >= 1")
  cfg = model_config(args.model, args.smoke, args.remat, bindings)
  name = f"{args.model}{' (smoke)' if args.smoke else ''}"
  table = benchmark(name, cfg, per_device_batch, seq_len, warmup, steps,
                    peak_flops_per_device(args.peak_flops))
  print("| field | value |\n|---|---|")
  print("\n".join(f"| {k} | {v} |" for k, v in table.items()), flush=True)
  return 0


def main(argv=None) -> int:
  """Runs the benchmark; a bad flag or an out-of-memory prints `error: ...`, status 2."""
  return run_main(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  sys.exit(main())
