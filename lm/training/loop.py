"""The outer training loop: mesh -> input -> jitted steps -> metrics, evals, checkpoints."""
import dataclasses
import functools
import itertools
import os
import time
from typing import Any, Callable

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from lm.errors import UserError
from lm.models.config import ModelConfig, flops_per_token
from lm.models.transformer import Transformer
from lm.sharding import (DEFAULT_RULES, batch_sharding, check_divisible, check_model_divisible,
                         global_batch, make_mesh, use_mesh)
from lm.training import checkpoints
from lm.training.metrics import MetricsWriter, peak_flops_per_device
from lm.training.optimizers import OptimizerConfig, make_optimizer, make_schedule
from lm.training.run_dir import check_resume, run_settings, write_run_files
from lm.training.state import abstract_state, create_state, state_shardings, with_shardings
from lm.training.step import LossConfig, eval_step, train_step


@dataclasses.dataclass
class TrainResult:
  state: Any
  model: Transformer
  mesh: Any
  last_eval_loss: float | None


@gin.configurable(denylist=["model_dir"])
def train(model_dir: str, *, model_cfg: ModelConfig = gin.REQUIRED, input_cfg=gin.REQUIRED,
          batches_fn: Callable = gin.REQUIRED, optimizer_cfg: OptimizerConfig = OptimizerConfig(),
          loss_cfg: LossConfig = LossConfig(), steps: int = 1000, log_every: int = 50,
          eval_every: int = 250, eval_steps: int = 20, checkpoint_every: int = 500,
          keep_checkpoints: int = 3, mesh_shape=(-1, 1, 1), seed: int = 0,
          grad_accum_steps: int = 1, peak_flops: float | None = None,
          wandb_project: str | None = None, progress: bool = True,
          init_from: str | None = None) -> TrainResult:
  """Trains (or resumes) the run in `model_dir` for `steps` optimizer steps.

  init_from: another model dir (e.g. from `lm-convert import-hf`) whose latest params start a
  new run (fine-tuning); ignored when model_dir already has a checkpoint to resume.

  batches_fn(input_cfg, split, start) returns an iterator of numpy batches of this process's
  rows with a `.state` (batches read) and a `.vocab_size` (None: unknown); input_cfg is a
  dataclass with .batch_size and .seq_len. Evals read the first `eval_steps` validation
  batches (fewer if the split ends sooner) once, at start-up; eval_steps=0 turns evals off.

  Every check runs before anything is written: a failed start leaves model_dir as it was.
  """
  model_dir = os.path.abspath(model_dir)  # relative to the working directory, as typed
  batch_size, seq_len = input_cfg.batch_size, input_cfg.seq_len
  task = getattr(input_cfg, "task", None)
  mesh = make_mesh(mesh_shape)
  check_divisible(mesh, batch_size, model_cfg.num_heads, model_cfg.kv_heads)
  check_model_divisible(mesh, model_cfg)
  if batch_size % grad_accum_steps:
    raise UserError(f"BATCH_SIZE={batch_size} is not divisible by grad_accum_steps")
  if model_cfg.positions == "learned" and seq_len > model_cfg.max_len:
    raise UserError(f"SEQ_LEN={seq_len} exceeds the model's max_len={model_cfg.max_len}")
  train_batches = batches_fn(input_cfg, "train")  # fails early on unknown tasks or bad data
  data_vocab = getattr(train_batches, "vocab_size", None)
  if data_vocab and data_vocab > model_cfg.vocab_size:
    raise UserError(f"ModelConfig.vocab_size={model_cfg.vocab_size} is smaller than the "
                    f"vocabulary of task {task!r} ({data_vocab} tokens)")
  eval_batches = _eval_batches(batches_fn, input_cfg, eval_steps) if eval_steps else []
  settings = run_settings(input_cfg, optimizer_cfg, steps)
  run_id = check_resume(model_dir, model_cfg, settings)

  model = Transformer(model_cfg)
  tx = make_optimizer(optimizer_cfg, steps)
  schedule = make_schedule(optimizer_cfg, steps)
  rules = DEFAULT_RULES
  with use_mesh(mesh), nn.logical_axis_rules(rules):
    shardings = state_shardings(model, tx, mesh, seq_len, rules)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    start = checkpoints.latest_step(ckpt_dir)
    if start is None:
      state = create_state(model, tx, shardings, seq_len, seed)
      if init_from:
        state = state.replace(params=_params_from(init_from, state.params, shardings.params))
    # Creates the checkpoint directory: only now that the start is known good.
    ckpt = checkpoints.Checkpointer(ckpt_dir, checkpoint_every, keep_checkpoints)
    if start is None:
      start = 0
    else:
      abstract = abstract_state(model, tx, shardings, seq_len)
      try:
        state, data_state = ckpt.restore(start, abstract)
      except (ValueError, KeyError) as e:
        raise UserError(f"cannot restore {model_dir} step {start} into this model: {e}")
      train_batches.restore(data_state["batches"])
    run_id = write_run_files(model_dir, model_cfg, task, settings, steps, run_id)
    writer = MetricsWriter(model_dir, wandb_project, gin.operative_config_str(), run_id=run_id,
                           resume_step=start)

    step_fn = jax.jit(
        functools.partial(train_step, model=model, tx=tx, loss_cfg=loss_cfg,
                          grad_accum_steps=grad_accum_steps),
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_step, model=model),
                      in_shardings=(shardings.params, batch_sharding(mesh)))

    def evaluate():
      totals = jnp.zeros(2)
      for batch in eval_batches:
        totals += jnp.stack(eval_fn(state.params, global_batch(mesh, batch)))
      if not totals[1]:  # all padding: no loss to report
        return None
      loss = float(totals[0] / totals[1])
      return {"eval/loss": loss, "eval/perplexity": float(jnp.exp(loss))}

    tokens_per_step = batch_size * seq_len
    flops = flops_per_token(model_cfg, seq_len) * tokens_per_step
    peak = peak_flops_per_device(peak_flops)
    bar = tqdm(total=steps, initial=start, disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True, mininterval=1.0)
    sums, window_start, window_steps, eval_loss = None, time.perf_counter(), 0, None
    for step in range(start + 1, steps + 1):
      state, metrics = step_fn(state, global_batch(mesh, next(train_batches)))
      sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
      window_steps += 1
      if step % log_every == 0 or step == steps:
        sums = jax.device_get(sums)
        elapsed = time.perf_counter() - window_start
        scalars = {"train/loss": sums["loss"] / window_steps,
                   "train/nll": sums["nll"] / window_steps,
                   "train/grad_norm": sums["grad_norm"] / window_steps,
                   "train/lr": float(schedule(step - 1)),
                   "train/tokens_per_sec": window_steps * tokens_per_step / elapsed,
                   "train/step_time_ms": 1000 * elapsed / window_steps}
        if loss_cfg.z_loss:
          scalars["train/z_loss"] = sums["z_loss"] / window_steps
        if peak:
          scalars["train/mfu"] = window_steps * flops / elapsed / (peak * jax.device_count())
        writer.write(step, scalars)
        bar.set_postfix(loss=f"{scalars['train/loss']:.4f}",
                        tok_s=f"{scalars['train/tokens_per_sec']:.0f}", refresh=False)
        sums, window_steps = None, 0
      if eval_batches and ((eval_every and step % eval_every == 0) or step == steps):
        results = evaluate()
        if results is None:
          bar.write(f"step {step}: no eval (the validation batches hold no tokens)")
        else:
          eval_loss = results["eval/loss"]
          writer.write(step, results)
          bar.write(f"step {step}: eval loss {eval_loss:.4f}")
      if step % checkpoint_every == 0 or step == steps:
        ckpt.save(step, state, {"batches": train_batches.state}, force=True)
      if window_steps == 0:
        window_start = time.perf_counter()  # evals and logging stay out of tokens/s
      bar.update(1)
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  return TrainResult(state=state, model=model, mesh=mesh, last_eval_loss=eval_loss)


def _eval_batches(batches_fn, input_cfg, eval_steps: int) -> list:
  """The fixed evaluation batches: the first eval_steps of the validation split, or all of it."""
  batches = list(itertools.islice(batches_fn(input_cfg, "validation"), eval_steps))
  if not batches:
    raise UserError(f"the validation split of task {getattr(input_cfg, 'task', None)!r} is "
                    "empty; set EVAL_STEPS=0 to train without evals")
  return batches


def _params_from(model_dir: str, params, shardings):
  """The latest params of another run directory, restored onto `params`' shapes and shardings."""
  abstract = with_shardings(params, shardings)
  model_dir = os.path.abspath(model_dir)
  try:
    return checkpoints.restore_params(os.path.join(model_dir, "checkpoints"),
                                      abstract_params=abstract)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise UserError(f"cannot initialize from {model_dir}: {e}") from None
