"""Device mesh (data, fsdp, tensor), the logical-axis rules that map names onto it, and the
params' NamedShardings derived from them (training, inference, LoRA and quantization share these).

Parameters and activations name their dimensions (`batch`, `embed`, `heads`, ...); the rules
below are the only place that says which mesh axis shards which name.
"""
import functools
import math
from typing import Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lm.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# First matching rule whose mesh axes are still free wins (flax semantics), so activations'
# `embed` stays unsharded once `batch` has taken fsdp, while parameters' `embed` is sharded.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("length", None),
    ("head_dim", None),
    ("layers", None),
)


def _auto_axis_types(n):
  # JAX >= 0.7 makes explicit-sharding meshes by default; the rules here use Auto axes.
  axis_type = getattr(jax.sharding, "AxisType", None)
  return {"axis_types": (axis_type.Auto,) * n} if axis_type else {}


@gin.configurable
def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """A mesh over all devices; one entry of `shape` may be -1 for "the rest"."""
  devices = jax.devices() if devices is None else devices
  shape = list(shape)
  if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise UserError(f"MESH_SHAPE must be 3 positive sizes (data, fsdp, tensor), one of them "
                    f"may be -1; got {tuple(shape)}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise UserError(f"MESH_SHAPE {tuple(shape)} does not divide the {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise UserError(f"MESH_SHAPE {tuple(shape)} needs {math.prod(shape)} devices; "
                    f"there are {len(devices)}")
  return jax.make_mesh(tuple(shape), MESH_AXES, devices=devices, **_auto_axis_types(3))


def use_mesh(mesh: Mesh):
  """Context in which activation constraints (by logical name) resolve against `mesh`."""
  return jax.set_mesh(mesh)


def logical_sharding(mesh: Mesh, logical_specs, rules=DEFAULT_RULES):
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes, the rest replicated;
  stacked: batches stacked on a new leading axis (one per step), the batch dimension second."""
  return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_divisible(mesh: Mesh, batch_size: int, num_heads: int, num_kv_heads: int):
  """Clear errors for shapes the mesh cannot split evenly."""
  dp, tp = data_parallel_size(mesh), mesh.shape["tensor"]
  if batch_size % dp:
    raise UserError(f"BATCH_SIZE={batch_size} is not divisible by the data-parallel size {dp} "
                    f"(mesh {dict(mesh.shape)})")
  for name, n in (("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
    if n % tp:
      raise UserError(f"{name}={n} is not divisible by the tensor axis size {tp}")


def check_model_divisible(mesh: Mesh, cfg):
  """Clear errors for model sizes the mesh cannot shard evenly (instead of IndivisibleError).

  cfg is a ModelConfig. Besides the heads (check_divisible), DEFAULT_RULES shard mlp and vocab
  over tensor and parameters' embed over fsdp.
  """
  fsdp, tp = mesh.shape["fsdp"], mesh.shape["tensor"]
  if cfg.mlp_dim % tp:
    raise UserError(f"ModelConfig.mlp_dim={cfg.mlp_dim} is not divisible by the tensor axis "
                    f"size {tp}")
  if cfg.padded_vocab_size % tp:
    raise UserError(f"ModelConfig.vocab_size={cfg.vocab_size} (padded: {cfg.padded_vocab_size}) "
                    f"is not divisible by the tensor axis size {tp}; pad it with "
                    "ModelConfig.vocab_pad_multiple (e.g. 128)")
  if cfg.d_model % fsdp:
    raise UserError(f"ModelConfig.d_model={cfg.d_model} is not divisible by the fsdp axis size "
                    f"{fsdp}")


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray],
                 stacked: bool = False) -> dict[str, jax.Array]:
  """This process's rows of the batch -> global jax.Arrays sharded over the batch axes
  (stacked: [steps, rows, ...] arrays, see batch_sharding)."""
  sharding = batch_sharding(mesh, stacked)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def init_params(model: nn.Module, rng, seq_len: int):
  """The model's boxed params (logical axis names kept) for tokens of length seq_len."""
  return model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]


def param_shardings(model: nn.Module, mesh: Mesh, seq_len: int, rules=DEFAULT_RULES):
  """(abstract params, their NamedShardings), computed without allocating any weights."""
  boxed = jax.eval_shape(functools.partial(init_params, model, seq_len=seq_len),
                         jax.random.PRNGKey(0))
  shardings = logical_sharding(mesh, nn.get_partition_spec(boxed), rules)
  return _strip_boxes(boxed), shardings


def _strip_boxes(tree):
  """Drops the axis-name boxes without applying sharding constraints (shapes only here)."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def with_shardings(shapes, shardings):
  """ShapeDtypeStructs carrying target shardings: where Orbax puts each restored array."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)
