"""tf.data iterator checkpoints as JSON strings, and gathering every process's into one dict.

T5X saves `tf.train.Checkpoint(iterator=...)` files per process next to the model checkpoint.
lm keeps the same checkpoint but carries it inside the JSON "data" item of the Orbax
checkpoint (written through TensorFlow's in-memory ram:// filesystem, base64-encoded), so the
training loop and checkpoint format need no second kind of file. Orbax writes that item from
process 0, so with several processes the per-shard states are gathered first.
"""
import base64
import json
import uuid

import jax
import numpy as np
import tensorflow as tf


def save_iterator(iterator) -> dict[str, str]:
  """The iterator's checkpoint: {file suffix: base64 bytes}."""
  prefix = f"ram://lm-data/{uuid.uuid4().hex}/it"
  tf.train.Checkpoint(iterator=iterator).write(prefix)
  blob = {}
  for path in tf.io.gfile.glob(prefix + "*"):
    with tf.io.gfile.GFile(path, "rb") as f:
      blob[path[len(prefix):]] = base64.b64encode(f.read()).decode("ascii")
    tf.io.gfile.remove(path)
  return blob


def restore_iterator(iterator, blob: dict[str, str]):
  """Restores a freshly made iterator of the same dataset from `save_iterator`'s output."""
  prefix = f"ram://lm-data/{uuid.uuid4().hex}/it"
  for suffix, data in blob.items():
    with tf.io.gfile.GFile(prefix + suffix, "wb") as f:
      f.write(base64.b64decode(data))
  try:
    tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()
  finally:
    for suffix in blob:
      tf.io.gfile.remove(prefix + suffix)


def gather_processes(local: dict) -> dict:
  """The union of every process's dict (a collective: all processes call it together)."""
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(local).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size]))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  merged = {}
  for row, size in zip(rows, sizes):
    merged.update(json.loads(row[:size].tobytes()))
  return merged
