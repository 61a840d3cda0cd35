"""Which params are matrices, and how each one's dimensions split into input and output.

Found by tracing the model's init abstractly (nothing is allocated) with every DenseGeneral call
intercepted, so new layers are covered without a list of names. Each matrix is described by a
`Kernel`: its path in the param tree, its shape and which dimensions it contracts (input) and
produces (output); `as_2d` / `from_2d` move between the stored layout and [(X,) I, O] (X: the
stacked layers of scan_layers; docs/conventions.md has the letters).
"""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models.config import ModelConfig
from lm.models.layers import DenseGeneral
from lm.models.transformer import Transformer

# Token and learned-position tables: rows are looked up (and, tied, multiply x as W^T), so a
# table [V, D] is a matrix with input D and output V.
EMBEDDING_PATHS = (("embed", "embedding"), ("pos_embed", "embedding"))


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A matrix param: path (tuple of keys), shape, and its leading layer axes (0 or 1), input
  dims and output dims as index tuples into shape."""
  path: tuple[str, ...]
  shape: tuple[int, ...]
  lead: int
  in_dims: tuple[int, ...]
  out_dims: tuple[int, ...]

  @property
  def name(self) -> str:
    return "/".join(self.path)

  @property
  def in_size(self) -> int:
    return math.prod(self.shape[d] for d in self.in_dims)

  @property
  def out_size(self) -> int:
    return math.prod(self.shape[d] for d in self.out_dims)

  @property
  def is_embedding(self) -> bool:
    return self.path in EMBEDDING_PATHS

  def as_2d(self, w):
    """The stored array -> [(X,) I, O] (an embedding table is transposed)."""
    order = tuple(range(self.lead)) + self.in_dims + self.out_dims
    w = jnp.transpose(w, order)
    return w.reshape(self.shape[:self.lead] + (self.in_size, self.out_size))

  def from_2d(self, w_IO):
    """Inverse of as_2d."""
    order = tuple(range(self.lead)) + self.in_dims + self.out_dims
    w = w_IO.reshape(tuple(self.shape[d] for d in order))
    return jnp.transpose(w, tuple(order.index(d) for d in range(len(self.shape))))

  def spec_2d(self, spec) -> tuple:
    """A PartitionSpec of the stored array -> (lead..., input, output) entries: a merged
    dimension is sharded as its first (major) component, which splits it the same way."""
    spec = tuple(spec) + (None,) * (len(self.shape) - len(spec))
    return spec[:self.lead] + (spec[self.in_dims[0]], spec[self.out_dims[0]])


@functools.cache
def find_kernels(cfg: ModelConfig) -> tuple[Kernel, ...]:
  """Every DenseGeneral kernel and embedding table of Transformer(cfg), in path order."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, DenseGeneral) and context.method_name == "__call__":
      calls[tuple(module.path)] = len(module.in_shape)
    return next_fun(*args, **kwargs)

  def init(rng):
    with nn.intercept_methods(record):
      return Transformer(cfg).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]

  shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  kernels = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    keys = tuple(k.key for k in path)
    shape = tuple(leaf.shape)
    if keys in EMBEDDING_PATHS:
      kernels.append(Kernel(keys, shape, 0, (1,), (0,)))
    elif keys[-1] == "kernel" and keys[:-1] in calls:
      n_in = calls[keys[:-1]]
      lead = 1 if keys[0] == "layers" else 0  # nn.scan stacks the layers on a leading axis
      n_out = len(shape) - lead - n_in
      kernels.append(Kernel(keys, shape, lead, tuple(range(lead, lead + n_in)),
                            tuple(range(lead + n_in, lead + n_in + n_out))))
  return tuple(kernels)


def get_path(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree: dict, path, value) -> dict:
  """A copy of nested dict `tree` with `path` replaced (the other branches are shared)."""
  if not path:
    return value
  return {**tree, path[0]: set_path(tree[path[0]], path[1:], value)}
