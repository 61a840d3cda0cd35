"""Small helpers shared by tests: a nano model, fixed char batches, a few jitted steps."""
import functools

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from lm.sharding import DEFAULT_RULES, batch_sharding, global_batch, make_mesh, use_mesh
from lm.training.optimizers import OptimizerConfig, make_optimizer
from lm.training.state import abstract_state, create_state, state_shardings
from lm.training.step import LossConfig, train_step

NANO = ModelConfig(vocab_size=68, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32)


@functools.cache
def char_batches(n=4, batch_size=8, seq_len=32):
  """n fixed training batches of the char task (numpy)."""
  from lm.data.inputs import InputConfig, make_batches
  it = make_batches(InputConfig(batch_size=batch_size, seq_len=seq_len, continuous=True), "train")
  return [next(it) for _ in range(n)]


def mesh_of(shape):
  n = int(np.prod(shape))
  return make_mesh(shape, devices=jax.devices()[:n])


@functools.cache
def trainer_for(shape):
  """A Trainer of the nano model on a mesh of `shape` (compiled once per test session)."""
  return Trainer(mesh_of(shape))


class Trainer:
  """The loop's jitted step on a given mesh, without the loop's I/O."""

  def __init__(self, mesh, cfg=NANO, opt=OptimizerConfig(warmup_steps=2), steps=100,
               loss_cfg=LossConfig(), grad_accum_steps=1, seq_len=32):
    self.mesh, self.model = mesh, Transformer(cfg)
    self.tx = make_optimizer(opt, steps)
    with use_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
      self.shardings = state_shardings(self.model, self.tx, mesh, seq_len)
      self._step = jax.jit(
          functools.partial(train_step, model=self.model, tx=self.tx, loss_cfg=loss_cfg,
                            grad_accum_steps=grad_accum_steps),
          in_shardings=(self.shardings, batch_sharding(mesh)),
          out_shardings=(self.shardings, NamedSharding(mesh, P())))
    self.seq_len = seq_len

  def init(self, seed=0):
    with use_mesh(self.mesh), nn.logical_axis_rules(DEFAULT_RULES):
      return create_state(self.model, self.tx, self.shardings, self.seq_len, seed)

  def abstract(self):
    """The state's shapes with their target shardings, as a restore needs them."""
    with use_mesh(self.mesh), nn.logical_axis_rules(DEFAULT_RULES):
      return abstract_state(self.model, self.tx, self.shardings, self.seq_len)

  def step(self, state, batch):
    with use_mesh(self.mesh), nn.logical_axis_rules(DEFAULT_RULES):
      return self._step(state, global_batch(self.mesh, batch))

  def losses(self, state, batches):
    out = []
    for batch in batches:
      state, metrics = self.step(state, batch)
      out.append(float(metrics["loss"]))
    return state, out
