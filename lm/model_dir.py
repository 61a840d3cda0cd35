"""A model directory: what lm-train, lm-convert, lm-prune, lm-quantize and merge-lora write and
what lm.load, lm-sample, lm-eval, the converters, the compressors and fine-tuning read.

  model.json               {"model": ModelConfig fields, "task", and one entry saying what was
                           done: "pruning" (kernel names) or "quantization" (scheme, groups)}
  checkpoints/             Orbax steps; the "params" item is all a reader needs
  lora.json                a LoRA run: its base directory and step, LoraConfig, sizes
  tokenizer/               lm.tokenizers' layout
  generation_config.json   HF's name: bos/eos/pad ids and decoding defaults (imports, tuned runs)

model.json is read by one rule (`model_config`): a key ModelConfig does not know is an error
naming it, a field the file lacks (added since it was written) takes its default. Orbax wants
absolute paths: every function here takes any path and makes it absolute. A directory written
here appears whole or not at all (`new_dir`), its model.json last.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from lm.errors import UserError
from lm.jsonl import read_json, write_json
from lm.models import quantized
from lm.models.config import ModelConfig
from lm.models.kernels import find_kernels, get_path, set_path
from lm.models.lora import Adapters, LoraConfig, merge
from lm.models.transformer import Transformer
from lm.sharding import (check_divisible, data_parallel_size, make_mesh, param_shardings,
                         with_shardings)
from lm.tokenizers import TOKENIZER_DIR, load_tokenizer

MODEL_JSON = "model.json"
CHECKPOINTS = "checkpoints"
LORA_JSON = "lora.json"
GENERATION_CONFIG = "generation_config.json"

# ModelConfig fields that change how a step computes (memory, activation precision, attention
# kernel, regularization), not what a checkpoint holds: a resumed run and a fine-tuning run may
# change them. Everything else (param_dtype and scan_layers included) is fixed by the weights.
CHANGEABLE_FIELDS = ("remat", "dtype", "attention_backend", "dropout_rate",
                     "attention_dropout_rate")


def absolute(path: str) -> str:
  """A user's path (relative to the working directory, or ~) made absolute (Orbax needs it)."""
  return os.path.abspath(os.path.expanduser(path))


# -- model.json ------------------------------------------------------------------------------
def read_model_json(model_dir: str) -> dict:
  """model.json's contents; a UserError where `model_dir` has none."""
  saved = read_json(os.path.join(absolute(model_dir), MODEL_JSON))
  if saved is None:
    raise UserError(f"{model_dir} is not an lm model directory (no {MODEL_JSON})")
  return saved


def model_config(fields: dict, source: str) -> ModelConfig:
  """The ModelConfig of saved `fields` (from `source`, named in errors): an unknown key is a
  UserError naming it; a missing one takes ModelConfig's default."""
  unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ModelConfig)})
  if unknown:
    raise UserError(f"{source}: unknown ModelConfig field(s) {', '.join(unknown)} (written by "
                    "another version of lm?)")
  return ModelConfig(**fields)


def read_config(model_dir: str) -> ModelConfig:
  """The ModelConfig in model_dir's model.json (model_config's rule)."""
  return model_config(read_model_json(model_dir)["model"],
                      os.path.join(model_dir, MODEL_JSON))


def read_lora_json(model_dir: str) -> dict | None:
  """A LoRA run's lora.json, None for any other directory."""
  return read_json(os.path.join(absolute(model_dir), LORA_JSON))


def pruned_kernels(model_dir: str) -> list[tuple[str, ...]]:
  """The kernel paths an lm-prune directory lists in model.json ([] for any other dir)."""
  saved = read_json(os.path.join(absolute(model_dir), MODEL_JSON)) or {}
  return [tuple(name.split("/")) for name in (saved.get("pruning") or {}).get("kernels", [])]


# -- params-only checkpoints -----------------------------------------------------------------
def latest_step(directory: str) -> int | None:
  """The latest complete step in `directory`, None if none (or no directory; nothing is created)."""
  if not os.path.isdir(directory):
    return None
  options = ocp.CheckpointManagerOptions(create=False)
  with ocp.CheckpointManager(absolute(directory), options=options) as manager:
    return manager.latest_step()


def read_params(directory: str, step: int | None = None, abstract_params=None):
  """Just the params item of a checkpoint directory's step (the latest by default).

  Raises FileNotFoundError when `directory` holds no complete checkpoint (creating nothing).
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory {directory}")
  options = ocp.CheckpointManagerOptions(create=False)
  with ocp.CheckpointManager(absolute(directory), options=options,
                             item_names=("params",)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
    args = ocp.args.StandardRestore(abstract_params)
    return manager.restore(step, args=ocp.args.Composite(params=args)).params


def save_params(directory: str, params, step: int = 0):
  """Writes params alone as checkpoint `step` (e.g. imported weights; read_params reads it)."""
  options = ocp.CheckpointManagerOptions(create=True)
  with ocp.CheckpointManager(absolute(directory), options=options,
                             item_names=("params",)) as manager:
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()


def restore_params(model_dir: str, step: int | None = None, abstract_params=None):
  """The params of a model directory (checkpoint `step`, default the latest) onto
  `abstract_params` (ShapeDtypeStructs with shardings); a LoRA run's are its base's merged with
  its adapters, in the model's dtype. FileNotFoundError without a complete checkpoint."""
  model_dir = absolute(model_dir)
  saved = read_lora_json(model_dir)
  ckpt_dir = os.path.join(model_dir, CHECKPOINTS)
  if saved is None:
    return read_params(ckpt_dir, step, abstract_params)
  lora = LoraConfig(**{f.name: saved[f.name] for f in dataclasses.fields(LoraConfig)})
  base = restore_params(saved["base"], saved["base_step"], abstract_params)
  model_cfg = read_config(model_dir)
  pruned = frozenset(pruned_kernels(saved["base"]))
  merge_fn = lambda p, a: merge(p, a, lora, dtype=model_cfg.weight_dtype, pruned=pruned)
  if abstract_params is None:
    return jax.jit(merge_fn)(base, read_params(ckpt_dir, step))
  shardings = jax.tree.map(lambda x: x.sharding, abstract_params)
  mesh = jax.tree.leaves(shardings)[0].mesh
  abstract, adapter_shardings = param_shardings(Adapters(model_cfg, lora), mesh, seq_len=1)
  adapters = read_params(ckpt_dir, step, with_shardings(abstract, adapter_shardings))
  return jax.jit(merge_fn, out_shardings=shardings)(base, adapters)


def load_params(model_dir: str, step: int | None = None, mesh=None):
  """(model.json's contents, its ModelConfig, the params of checkpoint `step` (default the
  latest) on `mesh` (default one device), sharded as in training: merged for a LoRA run,
  quantized for an lm-quantize dir). UserError without model.json or a complete checkpoint,
  or where the mesh cannot split the heads."""
  model_dir = absolute(model_dir)
  saved = read_model_json(model_dir)
  cfg = model_config(saved["model"], os.path.join(model_dir, MODEL_JSON))
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1]) if mesh is None else mesh
  check_divisible(mesh, data_parallel_size(mesh), cfg.num_heads, cfg.kv_heads)
  try:
    params = restore_params(model_dir, step, abstract_params(cfg, saved, mesh))
  except FileNotFoundError as e:
    raise UserError(str(e)) from None
  return saved, cfg, params


def abstract_params(cfg: ModelConfig, saved: dict, mesh):
  """The ShapeDtypeStructs (with their shardings on `mesh`) of the params a directory whose
  model.json is `saved` holds: Transformer(cfg)'s, or their lm.models.quantized format."""
  abstract, shardings = param_shardings(Transformer(cfg), mesh, seq_len=1)
  if not saved.get("quantization"):
    return with_shardings(abstract, shardings)
  meta = quantized.check_meta(saved["quantization"])
  qabstract = jax.eval_shape(lambda p: quantized.quantize_params(
      p, cfg=cfg, scheme=meta["scheme"], group_size=meta["group_size"],
      skip=tuple(meta["skip"])), abstract)
  out = with_shardings(abstract, shardings)
  for k in find_kernels(cfg):
    leaf = get_path(qabstract, k.path)
    if not quantized.is_quantized(leaf):
      continue
    # A matrix's input and output dimensions keep their mesh axes where the sizes divide.
    spec = k.spec_2d(get_path(shardings, k.path).spec)
    specs = {"q": spec, "scale": spec[:-2] + (None, spec[-1])}
    out = set_path(out, k.path, {
        name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
            mesh, _fit(specs[name], x.shape, mesh))) for name, x in leaf.items()})
  return out


def _fit(spec: tuple, shape: tuple, mesh) -> P:
  """A PartitionSpec whose entries are dropped where the mesh axes do not divide the size."""
  def size(entry):
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)
  return P(*(e if e is None or n % size(e) == 0 else None for e, n in zip(spec, shape)))


# -- end-of-sequence ids ---------------------------------------------------------------------
def eos_ids(model_dir: str, tokenizer) -> tuple[int, ...]:
  """The ids that end generation: the tokenizer's EOS and generation_config.json's
  eos_token_id (an int or a list, e.g. Llama 3's end-of-turn ids)."""
  ids = [] if tokenizer is None or tokenizer.eos_id is None else [tokenizer.eos_id]
  eos = (read_json(os.path.join(model_dir, GENERATION_CONFIG)) or {}).get("eos_token_id")
  ids += eos if isinstance(eos, list) else [] if eos is None else [eos]
  return tuple(sorted(set(map(int, ids))))


def save_generation_config(model_dir: str, source_dir: str | None, eos_ids) -> None:
  """Writes MODEL_DIR/generation_config.json (lm.load's and HF generate's end-of-sequence ids):
  source_dir's (e.g. an import's, with its decoding defaults), its eos_token_id joined by the
  tokenizer's EOS and `eos_ids` (the ids that close the turns a run was tuned on, e.g. the
  llama3 template's <|eot_id|>). Not written where source_dir has none and eos_ids add nothing
  to the tokenizer's EOS (generation stops there anyway).
  """
  config = read_json(os.path.join(source_dir, GENERATION_CONFIG)) if source_dir else None
  tokenizer = load_tokenizer(model_dir)
  eos = None if tokenizer is None else tokenizer.eos_id
  extra = {int(i) for i in eos_ids} - {eos}
  if config is None and not extra:
    return
  config = dict(config or {})
  listed = config.get("eos_token_id")
  listed = listed if isinstance(listed, list) else [] if listed is None else [listed]
  ids = sorted(set(listed) | extra | ({eos} if eos is not None else set()))
  config["eos_token_id"] = ids[0] if len(ids) == 1 else ids
  fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".generation-", suffix=".json")
  os.close(fd)
  write_json(tmp, config)
  os.replace(tmp, os.path.join(model_dir, GENERATION_CONFIG))


# -- writing a model directory ---------------------------------------------------------------
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
  save_params(os.path.join(absolute(model_dir), CHECKPOINTS), params)
  write_model_json(model_dir, cfg, task, extra)


def write_model_json(model_dir: str, cfg: ModelConfig, task: str | None = None,
                     extra: dict | None = None):
  """model.json: the ModelConfig, the task and `extra` entries."""
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
