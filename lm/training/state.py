"""Creating the train state directly in its shardings, derived from logical axis names."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lm.sharding import DEFAULT_RULES, init_params, param_shardings, with_shardings
from lm.training.step import TrainState


def state_shardings(model, tx, mesh: Mesh, seq_len: int, rules=DEFAULT_RULES):
  """NamedShardings for every leaf of the TrainState: optimizer moments follow their param."""
  abstract_params, p_shardings = param_shardings(model, mesh, seq_len, rules)
  replicated = NamedSharding(mesh, P())
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  # Factored statistics (Adafactor) are smaller than their param: replicate those.
  opt_shardings = optax.tree_map_params(
      tx, lambda leaf, s, p: s if leaf.shape == p.shape else replicated, abstract_opt,
      p_shardings, abstract_params, transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  return TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings,
                    rng=replicated)


def create_state(model, tx, shardings: TrainState, seq_len: int, seed: int) -> TrainState:
  """Initializes params and optimizer state on their devices (never whole on one host)."""
  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = nn.meta.unbox(init_params(model, params_rng, seq_len))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_rng)
  return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))


def abstract_state(model, tx, shardings: TrainState, seq_len: int) -> TrainState:
  """The state's shapes and dtypes, each carrying its target sharding (what a restore needs)."""
  shapes = jax.eval_shape(functools.partial(create_state, model, tx, shardings, seq_len, 0))
  return with_shardings(shapes, shardings)
