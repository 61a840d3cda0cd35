"""The outer training loop: mesh -> input -> jitted steps -> metrics, evals, checkpoints."""
import dataclasses
import functools
import itertools
import os
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from lm.errors import UserError
from lm.model_dir import latest_step
from lm.models.config import ModelConfig, flops_per_token
from lm.models.transformer import Transformer
from lm.sharding import (DEFAULT_RULES, batch_sharding, check_divisible, check_model_divisible,
                         global_batch, make_mesh, use_mesh)
from lm.training import checkpoints
from lm.training.hooks import StepInfo
from lm.training.metrics import MetricsWriter, peak_flops_per_device, throughput_scalars
from lm.training.optimizers import OptimizerConfig, make_optimizer, make_schedule
from lm.training.run_dir import check_resume, run_settings, write_run_files
from lm.training.state import abstract_state, create_state, state_shardings
from lm.training.step import LossConfig, eval_step, train_step
from lm.training.supervisor import Supervisor
from lm.training.trainable import FullParams
from lm.training.validate import check_train_config


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
          init_from: str | None = None, objective: Callable | None = None,
          nonfinite: str = "stop", max_consecutive_skips: int = 10, trainable=None,
          optimizer_wrappers: Sequence[Callable] = (),
          hooks: Sequence[Callable] = (), steps_per_call: int = 1) -> TrainResult:
  """Trains (or resumes) the run in `model_dir` for `steps` optimizer steps.

  init_from: another model dir (e.g. from `lm-convert import-hf`) whose latest params start a
  new run (fine-tuning); ignored when model_dir already has a checkpoint to resume.

  batches_fn(input_cfg, split, start) returns an iterator of numpy batches of this process's
  rows with a `.state` (batches read) and a `.vocab_size` (None: unknown); input_cfg is a
  dataclass with .batch_size and .seq_len (and .rows where a batch feeds the model another
  number of sequences than batch_size, e.g. two per preference pair). Evals read the first
  `eval_steps` validation batches (fewer if the split ends sooner) once, at start-up;
  eval_steps=0 turns evals off.
  A train iterator with a `start_run(model_dir)` method is called once the run directory is
  made (e.g. to keep files beside the run).

  objective: replaces the token cross-entropy of the train and eval steps (see
  lm.training.step.train_step); each of its metrics is logged as train/NAME and eval/NAME.

  trainable: what the optimizer trains (lm/training/trainable.py); None: FullParams(), every
  param (init_from's latest params start a new run). lm.finetuning.lora.LoraParams() trains
  low-rank adapters of init_from's frozen params instead; checkpoints hold the adapters, the
  result the merge.
  optimizer_wrappers: each wrap(tx, init_from) -> tx, applied in order to the optimizer (e.g.
  lm.compression.masks.keep_pruned: an lm-prune init_from keeps its zeros).
  hooks: periodic work run at every eval, e.g. lm.evaluation.training.EvalTasks (lm-eval
  tasks, logged as eval/<task>/<metric>); see lm/training/hooks.py.

  nonfinite: 'stop' (a non-finite loss or gradient ends the run with an error, no checkpoint
  written after it) or 'skip' (the step's update is skipped; `max_consecutive_skips` in a row
  end the run). SIGTERM/SIGINT save a checkpoint after the current step and raise Preempted;
  a second run on the same model_dir is refused (lm/training/supervisor.py).

  steps_per_call: optimizer steps per jitted call (a lax.scan over that many stacked batches),
  which saves the per-step dispatch and host sync of small models. Calls never cross a log,
  eval or checkpoint step (steps before one that a whole call does not fit run one by one),
  and SIGTERM/SIGINT save at the end of the current call. The grouping depends only on the
  step a run starts from, so a resume is still bit-exact; changing steps_per_call on a resume
  changes the numerics slightly (another compiled program), not the schedule.

  Every check runs before anything is written: a failed start leaves model_dir as it was.
  """
  model_dir = os.path.abspath(model_dir)  # relative to the working directory, as typed
  batch_size, seq_len = input_cfg.batch_size, input_cfg.seq_len
  task = getattr(input_cfg, "task", None)
  if model_cfg is None:  # gin_configs/runs/finetune.gin without INIT_FROM
    raise UserError("no model: set INIT_FROM, the directory to fine-tune from")
  warnings = check_train_config(
      steps=steps, input_cfg=input_cfg, optimizer_cfg=optimizer_cfg, loss_cfg=loss_cfg,
      log_every=log_every, eval_every=eval_every, eval_steps=eval_steps,
      checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
      grad_accum_steps=grad_accum_steps, seed=seed, nonfinite=nonfinite,
      max_consecutive_skips=max_consecutive_skips, steps_per_call=steps_per_call)
  mesh = make_mesh(mesh_shape)
  check_divisible(mesh, batch_size, model_cfg.num_heads, model_cfg.kv_heads)
  check_model_divisible(mesh, model_cfg)
  if model_cfg.positions == "learned" and seq_len > model_cfg.max_len:
    raise UserError(f"SEQ_LEN={seq_len} exceeds the model's max_len={model_cfg.max_len}")
  train_batches = batches_fn(input_cfg, "train")  # fails early on unknown tasks or bad data
  data_vocab = getattr(train_batches, "vocab_size", None)
  if data_vocab and data_vocab > model_cfg.vocab_size:
    raise UserError(f"ModelConfig.vocab_size={model_cfg.vocab_size} is smaller than the "
                    f"vocabulary of task {task!r} ({data_vocab} tokens)")
  eval_batches = _eval_batches(batches_fn, input_cfg, eval_steps) if eval_steps else []
  # Named eval sets besides the task's, e.g. a mixture's members (lm.data.mixtures), logged as
  # eval/<name>/loss so that forgetting shows; read by batches_fn, as the task's eval batches.
  eval_sets = train_batches.eval_sets(eval_steps, batches_fn) if eval_steps and hasattr(
      train_batches, "eval_sets") else {}
  settings = run_settings(input_cfg, optimizer_cfg, steps)
  run_id = check_resume(model_dir, model_cfg, settings)

  model = Transformer(model_cfg)
  trainable = FullParams() if trainable is None else trainable
  tx = make_optimizer(optimizer_cfg, steps)
  for wrap in optimizer_wrappers:
    tx = wrap(tx, init_from)
  schedule = make_schedule(optimizer_cfg, steps)
  rules = DEFAULT_RULES
  with use_mesh(mesh), nn.logical_axis_rules(rules), \
       Supervisor(nonfinite, max_consecutive_skips) as sup:
    trained = trainable.module(model)  # what tx updates
    shardings = state_shardings(trained, tx, mesh, seq_len, rules)
    trainable.setup(model_dir, model, init_from, mesh, seq_len, rules)
    frozen, frozen_shardings = trainable.frozen, trainable.frozen_shardings
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    start = latest_step(ckpt_dir)
    if start is None:
      state = create_state(trained, tx, shardings, seq_len, seed)
      state = state.replace(params=trainable.initial_params(state.params, shardings.params))
    # Creates the checkpoint directory: only now that the start is known good.
    sup.lock(model_dir)  # one run per model_dir
    ckpt = checkpoints.Checkpointer(ckpt_dir, checkpoint_every, keep_checkpoints)
    if start is None:
      start = 0
    else:  # the newest step that restores (unreadable newer ones are moved aside)
      start, state, data_state = ckpt.restore_newest(
          abstract_state(trained, tx, shardings, seq_len),
          os.path.join(model_dir, "corrupt_checkpoints"))
      train_batches.restore(data_state["batches"])
    run_id = write_run_files(model_dir, model_cfg, task, settings, steps, run_id)
    if hasattr(train_batches, "start_run"):
      train_batches.start_run(model_dir)
    writer = MetricsWriter(model_dir, wandb_project, gin.operative_config_str(), run_id=run_id,
                           resume_step=start)
    trainable.start_run(model_dir, state)
    bind = trainable.bind  # e.g. LoRA: the step also takes `frozen`

    train_fn = functools.partial(bind(train_step), model=model, tx=tx, loss_cfg=loss_cfg,
                                 grad_accum_steps=grad_accum_steps, objective=objective,
                                 skip_nonfinite=nonfinite == "skip")
    eval_fn_ = functools.partial(bind(eval_step), model=model, objective=objective)

    def train_and_total(state, batch, totals, *frozen):
      """One step; its metrics added to the window's sums, its flag to the non-finite counts."""
      state, metrics = train_fn(state, batch, *frozen)
      return state, {"sums": jax.tree.map(jnp.add, totals["sums"], metrics),
                     "counts": sup.guard.update(totals["counts"], state.step,
                                                metrics["nonfinite"])}

    def scan_steps(state, batches, totals, *frozen):
      """train_and_total over batches stacked on a leading axis (steps_per_call of them)."""
      def body(carry, batch):
        state, totals = carry
        return train_and_total(state, batch, totals, *frozen), None
      return jax.lax.scan(body, (state, totals), batches)[0]

    replicated = NamedSharding(mesh, P())
    jit_steps = functools.partial(jax.jit, out_shardings=(shardings, replicated),
                                  donate_argnums=0)
    step_fn = jit_steps(train_and_total, in_shardings=(
        shardings, batch_sharding(mesh), replicated, *frozen_shardings))
    multi_step_fn = jit_steps(scan_steps, in_shardings=(
        shardings, batch_sharding(mesh, stacked=True), replicated, *frozen_shardings))
    eval_fn = jax.jit(lambda params, batch, totals, *frozen: jax.tree.map(
        jnp.add, totals, eval_fn_(params, batch, *frozen)),
        in_shardings=(shardings.params, batch_sharding(mesh), replicated, *frozen_shardings))
    eval_zeros = []  # the eval sums' zeros, made at the first eval

    def evaluate(batches=eval_batches, prefix="eval"):
      totals = None
      for batch in batches:
        batch = global_batch(mesh, batch)
        if not eval_zeros:
          eval_zeros.append(_zeros(mesh, jax.eval_shape(eval_fn_, state.params, batch, *frozen)))
        previous = eval_zeros[0] if totals is None else totals
        totals = eval_fn(state.params, batch, previous, *frozen)
        jax.block_until_ready(previous)  # one program ahead at most (see the train loop)
      loss_sum, weight_sum, sums = jax.device_get(totals)
      if not weight_sum:  # all padding: no loss to report
        return None
      loss = float(loss_sum / weight_sum)
      results = {f"{prefix}/loss": loss,
                 **{f"{prefix}/{k}": float(v / weight_sum) for k, v in sums.items()}}
      if objective is None:
        results[f"{prefix}/perplexity"] = float(jnp.exp(loss))
      return results

    tokens_per_step = getattr(input_cfg, "rows", batch_size) * seq_len
    flops = flops_per_token(model_cfg, seq_len) * tokens_per_step
    peak = peak_flops_per_device(peak_flops)
    sup.start(warnings)  # prints warnings, watches SIGTERM/SIGINT from now on
    bar = sup.closing(tqdm(total=steps, initial=start, dynamic_ncols=True, mininterval=1.0,
                           disable=not progress or jax.process_index() != 0))
    totals, zero_sums = None, None
    window_start, window_steps, eval_loss = time.perf_counter(), 0, None
    step = start
    while step < steps:
      n = _call_steps(step, steps_per_call, steps, (log_every, eval_every, checkpoint_every))
      local = [next(train_batches) for _ in range(n)]
      if totals is None:  # the sums have the shapes of the step's metrics (scalars)
        zero_sums = _zeros(mesh, jax.eval_shape(train_fn, state, local[0], *frozen)[1])
        totals = {"sums": zero_sums, "counts": _zeros(mesh, sup.guard.zeros())}
      previous = totals
      if n == 1:
        state, totals = step_fn(state, global_batch(mesh, local[0]), totals, *frozen)
      else:
        stacked = jax.tree.map(lambda *rows: np.stack(rows), *local)
        state, totals = multi_step_fn(state, global_batch(mesh, stacked, stacked=True), totals,
                                      *frozen)
      step += n
      # One program per call and at most one call waiting behind the running one. XLA:CPU lets
      # a device hold 32 programs in flight and launches the replicas of a multi-device program
      # from a thread pool as small as the core count: a host far ahead (many small programs
      # per step, as this loop once dispatched) could fill one device's slots with programs
      # waiting on a collective whose replica on that device was never launched, and the
      # all-reduce rendezvous timed out ("Expected 2 threads ... only 1 of them arrived").
      jax.block_until_ready(previous)
      window_steps += n
      if step % log_every == 0 or step == steps:
        sums = jax.device_get(totals["sums"])
        totals = {"sums": zero_sums, "counts": totals["counts"]}
        sup.check(ckpt, totals["counts"])
        elapsed = time.perf_counter() - window_start
        skipped = int(sums.pop("nonfinite"))  # skipped steps' metrics are zeros: not averaged
        scalars = {f"train/{k}": v / (window_steps - skipped) for k, v in sums.items()
                   if window_steps > skipped and k != "tokens"
                   and (k != "z_loss" or loss_cfg.z_loss)}
        if nonfinite == "skip":
          scalars["train/skipped_steps"] = skipped
        scalars["train/lr"] = float(schedule(step - 1))
        scalars.update(throughput_scalars(window_steps, elapsed, tokens_per_step, flops, peak,
                                          jax.device_count()))
        writer.write(step, scalars)
        bar.set_postfix(loss=f"{scalars.get('train/loss', float('nan')):.4f}",
                        tok_s=f"{scalars['train/tokens_per_sec']:.0f}", refresh=False)
        window_steps = 0
      is_eval_step = (eval_every and step % eval_every == 0) or step == steps
      if (eval_batches or hooks) and is_eval_step:
        sup.check(ckpt, totals["counts"])
      if eval_batches and is_eval_step:
        results = evaluate()
        if results is None:
          bar.write(f"step {step}: no eval (the validation batches hold no tokens)")
        else:
          eval_loss = results["eval/loss"]
          writer.write(step, results)
          bar.write(f"step {step}: eval loss {eval_loss:.4f}")
      for name, batches in eval_sets.items() if is_eval_step else ():
        member = evaluate(batches, f"eval/{name}")  # None: no tokens in its batches
        if member:
          writer.write(step, member)
      if hooks and is_eval_step:
        info = StepInfo(step, model_dir, model_cfg, mesh, trainable.merged(state.params))
        for hook in hooks:
          logged = hook(info)
          if logged:
            writer.write(step, logged)
      preempted = sup.preempted(step)  # every process asks every step; all get one answer
      if step % checkpoint_every == 0 or step == steps or preempted:
        sup.check(ckpt, totals["counts"])
        ckpt.save(step, state, {"batches": train_batches.state}, force=True)
      if preempted and step < steps:
        raise sup.stopped(step, ckpt, writer)
      if window_steps == 0:
        window_start = time.perf_counter()  # evals and logging stay out of tokens/s
      bar.update(n)
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
    state = state.replace(params=trainable.merged(state.params))
  return TrainResult(state=state, model=model, mesh=mesh, last_eval_loss=eval_loss)


def _call_steps(step: int, steps_per_call: int, steps: int, every: Sequence[int]) -> int:
  """How many steps the call after `step` runs: steps_per_call where that many fit before the
  next step with host work (a multiple of an `every`, or the last step), else one."""
  next_stop = min([steps] + [(step // e + 1) * e for e in every if e])
  return steps_per_call if next_stop - step >= steps_per_call else 1


def _zeros(mesh, shapes):
  """Zeros of `shapes` (a pytree), replicated over the mesh: a transfer, no program to run."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda s: jax.make_array_from_process_local_data(
      sharding, np.zeros(s.shape, s.dtype)), shapes)


def _eval_batches(batches_fn, input_cfg, eval_steps: int) -> list:
  """The fixed evaluation batches: the first eval_steps of the validation split, or all of it."""
  batches = list(itertools.islice(batches_fn(input_cfg, "validation"), eval_steps))
  if not batches:
    raise UserError(f"the validation split of task {getattr(input_cfg, 'task', None)!r} is "
                    "empty; set EVAL_STEPS=0 to train without evals")
  return batches

