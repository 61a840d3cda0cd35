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
from lm.tokenizers import TOKENIZER_DIR
from lm.training import checkpoints

MODEL_JSON = "model.json"  # as lm.training.loop writes it
GENERATION_CONFIG = "generation_config.json"  # HF's name; bos/eos/pad ids and decoding defaults


def absolute(path: str) -> str:
  """A user's path (relative to the working directory, or ~) made absolute (Orbax needs it)."""
  return os.path.abspath(os.path.expanduser(path))


def check_new_dir(path: str, overwrite: bool = False, sources=(), replaces: str = MODEL_JSON):
  """Refuses (UserError) to write `path` where that would touch what the command reads or what
  it did not write: `path` may not be, contain or lie inside any of `sources` (the files and
  directories read), and a non-empty `path` is replaced only with `overwrite` and only if it is
  a directory holding `replaces` (what the command writes: a model dir's model.json)."""
  path = absolute(path)
  real = os.path.realpath(path)
  for source in sources:
    source = os.path.realpath(absolute(source))
    common = os.path.commonpath([real, source])
    if common in (real, source):
      relation = "is" if real == source else "contains" if common == real else "is inside"
      raise UserError(f"the output {path} {relation} the input {source}; give another directory")
  if not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)):
    return
  if not overwrite:
    raise UserError(f"{path} exists and is not empty; pass --overwrite to replace it")
  if not os.path.isfile(os.path.join(path, replaces)):
    raise UserError(f"{path} is not a directory this command writes (no {replaces}); "
                    "--overwrite replaces only such a directory: remove it or give another path")


@contextlib.contextmanager
def new_dir(path: str, overwrite: bool = False, sources=(), replaces: str = MODEL_JSON):
  """Yields an empty temporary directory beside `path` that replaces `path` when the block ends
  without error; on error it is removed (with any parents created for it).

  `path` is checked first (check_new_dir: never one of `sources` or around them, never a
  non-empty directory without `overwrite` or without `replaces`).
  """
  check_new_dir(path, overwrite, sources, replaces)
  path = absolute(path)
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
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if first_missing != path:
      shutil.rmtree(first_missing, ignore_errors=True)
    raise


def write_model_dir(model_dir: str, cfg: ModelConfig, params, task: str | None = None,
                    extra: dict | None = None):
  """A params-only checkpoint (step 0), then model.json (`extra`: more entries, e.g.
  {"pruning": ...}): the description comes last, so a directory with a model.json always has
  its weights."""
  os.makedirs(model_dir, exist_ok=True)
  checkpoints.save_params(os.path.join(absolute(model_dir), "checkpoints"), params)
  with open(os.path.join(model_dir, MODEL_JSON), "w") as f:
    json.dump({"model": dataclasses.asdict(cfg), "task": task, **(extra or {})}, f, indent=1)


def save_model_dir(out_dir: str, cfg: ModelConfig, params, sources, task: str | None = None,
                   extra: dict | None = None, overwrite: bool = False):
  """Writes the new model dir `out_dir` (all or nothing, checked by check_new_dir) of a model
  derived from `sources` (its input directories, first the one it was loaded from): the
  params and model.json (write_model_dir), and the tokenizer and generation_config.json of the
  first source that has each."""
  with new_dir(out_dir, overwrite, sources) as tmp:
    for name in (TOKENIZER_DIR, GENERATION_CONFIG):
      found = next((os.path.join(d, name) for d in sources
                    if os.path.exists(os.path.join(d, name))), None)
      if found and os.path.isdir(found):
        shutil.copytree(found, os.path.join(tmp, name))
      elif found:
        shutil.copyfile(found, os.path.join(tmp, name))
    write_model_dir(tmp, cfg, params, task, extra)


def write_json(path: str, value: dict):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, ensure_ascii=False)


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)
