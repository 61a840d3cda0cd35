"""Writing converted directories safely: all or nothing, never over a user's files by accident.

An lm model dir is what lm-train writes: model.json ({"model": ModelConfig fields, "task"})
and Orbax checkpoints under checkpoints/; an imported one holds the params item only, which
`lm.load`, `lm-sample` and `lm-train` (through `train.init_from`) read, plus the tokenizer
(lm.tokenizers' layout, under tokenizer/) and generation_config.json (the HF special ids,
kept for export) where the source has them.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.training import checkpoints

MODEL_JSON = "model.json"  # as lm.training.loop writes it
GENERATION_CONFIG = "generation_config.json"  # HF's name; bos/eos/pad ids and decoding defaults


def absolute(path: str) -> str:
  """A user's path (relative to the working directory, or ~) made absolute (Orbax needs it)."""
  return os.path.abspath(os.path.expanduser(path))


@contextlib.contextmanager
def new_dir(path: str, overwrite: bool = False):
  """Yields an empty temporary directory beside `path` that replaces `path` when the block ends
  without error; on error it is removed (with any parents created for it).

  A non-empty `path` is refused unless `overwrite`.
  """
  path = absolute(path)
  if os.path.exists(path) and not overwrite and (
      not os.path.isdir(path) or os.listdir(path)):
    raise UserError(f"{path} exists and is not empty; pass --overwrite to replace it")
  first_missing = path
  while not os.path.exists(os.path.dirname(first_missing)):
    first_missing = os.path.dirname(first_missing)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 -> what os.makedirs would have made
  try:
    yield tmp
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if first_missing != path:
      shutil.rmtree(first_missing, ignore_errors=True)
    raise


def write_model_dir(model_dir: str, cfg: ModelConfig, params, task: str | None = None):
  """A params-only checkpoint (step 0), then model.json: the description comes last, so a
  directory with a model.json always has its weights."""
  os.makedirs(model_dir, exist_ok=True)
  checkpoints.save_params(os.path.join(absolute(model_dir), "checkpoints"), params)
  with open(os.path.join(model_dir, MODEL_JSON), "w") as f:
    json.dump({"model": dataclasses.asdict(cfg), "task": task}, f, indent=1)


def write_json(path: str, value: dict):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, ensure_ascii=False)


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)
