"""What a run's optimizer trains: the trainable-params strategy of lm.training.loop.train.

A strategy (`train.trainable`) answers, for one run, the questions whose answers differ between
full training and parameter-efficient methods; the loop asks them and knows no method:

- module(model): the module whose `init` gives the params the optimizer updates (the model
  itself, or e.g. LoRA's adapter tree).
- setup(model_dir, model, init_from, mesh, seq_len, rules): every check and load the strategy
  needs, before the run writes anything (inside the run's mesh and axis rules).
- frozen, frozen_shardings: tuples of extra arguments of the jitted steps (params that are
  used but not trained) and their shardings; () when there are none.
- initial_params(params, shardings): a new run's trainable params, from the freshly initialized
  `params` (e.g. init_from's latest params onto their shapes and shardings).
- bind(step_fn): the step that lm.training.step's train_step/eval_step becomes, taking the
  `frozen` arguments after the batch.
- start_run(model_dir, state): called once the run directory is made (e.g. to describe the run).
- merged(params): the model's params for the trainable ones (what evals and the result use).

FullParams is the default; lm.finetuning.lora.LoraParams trains low-rank adapters instead.
"""
import os

from lm.errors import UserError
from lm.model_dir import restore_params
from lm.sharding import with_shardings


class FullParams:
  """Trains every param of the model; a new run with init_from starts from its latest params
  (a LoRA run's merged). init_from is ignored when model_dir already has a checkpoint."""

  frozen, frozen_shardings = (), ()

  def module(self, model):
    return model

  def setup(self, model_dir, model, init_from, mesh, seq_len, rules):
    del model_dir, model, mesh, seq_len, rules  # nothing to load before the state exists
    self.init_from = init_from

  def initial_params(self, params, shardings):
    return _params_from(self.init_from, params, shardings) if self.init_from else params

  def bind(self, step_fn):
    return step_fn

  def start_run(self, model_dir, state):
    del model_dir, state

  def merged(self, params):
    return params


def _params_from(model_dir: str, params, shardings):
  """The latest params of another run directory, restored onto `params`' shapes and shardings."""
  abstract = with_shardings(params, shardings)
  model_dir = os.path.abspath(model_dir)
  try:
    return restore_params(model_dir, abstract_params=abstract)  # LoRA runs: merged
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise UserError(f"cannot initialize from {model_dir}: {e}") from None
