"""lm-train: train (or resume) a model from gin files.

  lm-train --gin_file=gin_configs/runs/shakespeare_char_cpu.gin --model_dir=/tmp/lm/run \
      [--gin.TRAIN_STEPS=500 ...] [--coordinator_address=host:port --num_processes=N --process_id=i]
      [--verbose]

Exit status: 0 done; 2 a user error (one `error:` line, nothing written); 1 training halted
(non-finite loss, a checkpoint that cannot be written); 128 + signal after SIGTERM/SIGINT
(a checkpoint was saved: run the same command to resume).
"""
import argparse
import logging
import os
import sys

import gin
import jax
import numpy as np
from jax.experimental import multihost_utils

from lm.cli.common import first_line, parse_args, parse_gin, run_main
from lm.errors import UserError
from lm.training import console, loop
from lm.training.checkpoints import CheckpointWriteError
from lm.training.guards import TrainingHalted
from lm.training.preemption import Preempted


@gin.configurable
def sample_after_training(result, input_cfg=gin.REQUIRED, num_tokens: int = 0,
                          prompt: str = "\n", temperature: float = 0.8, top_k: int | None = 200,
                          seed: int = 0):
  """Prints `num_tokens` sampled from the trained model (nothing when 0).

  Every process must call it: the params, sharded over all hosts' devices, are gathered
  (a collective) before process 0 samples on its host.
  """
  if not num_tokens or not input_cfg.task:
    return
  try:
    from lm.data.pipeline import vocabulary
  except ImportError:
    if jax.process_index() == 0:
      print("note: no sample (decoding the task's vocabulary needs SeqIO)")
    return
  params = multihost_utils.process_allgather(result.state.params, tiled=True)
  if jax.process_index() != 0:
    return
  from lm.decoding.windowed import generate
  vocab = vocabulary(input_cfg.task)
  prompt_1P = np.array([vocab.encode(prompt)], np.int32)
  cfg = result.model.cfg
  window = min(input_cfg.seq_len, cfg.max_len)
  tokens = generate(result.model, params, prompt_1P, jax.random.PRNGKey(seed),
                    num_steps=num_tokens, temperature=temperature, top_k=top_k, window=window)
  print("-" * 30, "sample", "-" * 30)
  print(vocab.decode(np.asarray(tokens[0]).tolist()))


@gin.configurable
def host_devices(count: int = 1):
  """Splits the host CPU into `count` JAX devices (must run before JAX starts its backends).

  XLA:CPU runs most of one program's small ops on a single core; with one device per core the
  data-parallel mesh runs a program on each. Accelerator backends are unaffected.
  """
  flag = f"--xla_force_host_platform_device_count={count}"
  if count > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def _main(argv):
  parser = argparse.ArgumentParser(prog="lm-train", description=__doc__.split("\n")[0])
  parser.add_argument("--gin_file", action="append", default=[], help="gin config (repeatable)")
  parser.add_argument("--model_dir", required=True, help="run directory (resumed if it exists)")
  parser.add_argument("--coordinator_address", help="host:port of process 0 (multi-host)")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--verbose", action="store_true",
                      help="show TensorFlow/XLA/absl start-up logs and library INFO logs")
  args, bindings = parse_args(parser, argv)
  if not args.gin_file:
    raise UserError("give at least one --gin_file")
  if args.verbose:
    return _train(args, bindings)
  console.hide_native_logs()  # until training starts (lm.training.console)
  levels = {name: logging.getLogger(name).level for name in ("", "absl")}
  logging.getLogger().setLevel(logging.ERROR)  # library INFO and WARNING lines
  logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax's tracebacks of what we report
  failed = True
  try:
    code = _train(args, bindings)
    failed = False
    return code
  except (UserError, TrainingHalted):
    failed = False  # explained in one line
    raise
  finally:
    console.show_native_logs(replay=failed)
    for name, level in levels.items():
      logging.getLogger(name).setLevel(level)


def _train(args, bindings) -> int:
  if args.coordinator_address:
    # Collectives between CPU processes need gloo; GPU/TPU backends ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  import lm.data.arrays  # noqa: F401  (TF-free inputs: exported arrays, synthetic tokens)
  import lm.data.inputs  # noqa: F401  (InputConfig, make_batches)
  try:
    import lm.data.pipeline  # noqa: F401  (registers the SeqIO tasks and their gin helpers)
  except ImportError as e:  # a TF-less image trains from lm.data.arrays inputs
    print(f"note: SeqIO input unavailable ({e}); use lm.data.arrays inputs")
  parse_gin(args.gin_file, bindings)
  host_devices()
  try:
    result = loop.train(args.model_dir)
  except TrainingHalted as e:
    prefix = "" if isinstance(e, Preempted) else "error: "
    if isinstance(e, CheckpointWriteError):  # orbax's failing writers: see console.exit_now
      console.exit_now(f"error: {first_line(e)}", e.exit_code)
    print(f"{prefix}{first_line(e)}", file=sys.stderr)
    return e.exit_code
  sample_after_training(result)
  return 0


def main(argv=None):
  raise SystemExit(run_main(_main, argv))


if __name__ == "__main__":
  main()
