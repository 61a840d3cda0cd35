"""Preference pairs for lm-train: JSONL {"prompt", "chosen", "rejected"} -> batches (no TensorFlow).

Each line's prompt is a string (one user message) or a chat [{"role", "content"}, ...]; chosen
and rejected are strings, the assistant's reply. Prompt + reply are rendered and tokenized as
instruction tuning does (lm.data.chat_templates.encode_conversation: plain, completion, llama3
or the model's own template; the start ids first, the text encoded as one, so the prompt's ids
are exactly those generate() feeds): the response is the reply's trained tokens (its text and
the EOS or end-of-turn token closing it), the prompt everything before. The policy and the
reference see exactly the same ids. A pair longer than SEQ_LEN + 1 tokens loses the oldest
prompt tokens; one whose response alone does not fit is dropped (and counted).

The tokenizer is that of `reference_dir` (normally the run's INIT_FROM), which is also the
frozen reference model. Its log-probabilities of the responses come from `lm.load(...).score`:
  cached  once per split, before the first batch; lm-train keeps the training split's in
          MODEL_DIR/reference_logps.npz with a hash of the reference's weights and the
          tokenized pairs, so a resume reuses them and a changed reference or data recomputes;
  online  per batch, as it is drawn;
  none    not at all (SimPO and SFT need no reference).
"""
import dataclasses
import functools
import hashlib
import json
import os
import shutil

import gin
import jax
import numpy as np

from lm import tokenizers
from lm.data import chat_templates  # TF-free
from lm.errors import UserError
from lm.model_dir import save_generation_config
from lm.jsonl import read_jsonl

REFERENCE_MODES = ("cached", "online", "none")
CACHE_FILE = "reference_logps.npz"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PreferenceInputConfig:
  """Where the pairs are and how to batch them. batch_size counts pairs (2 rows each)."""
  train_path: str = ""
  validation_path: str = ""
  reference_dir: str = ""
  reference_logps: str = "cached"
  template: str = "plain"
  batch_size: int = 8
  seq_len: int = 128
  seed: int = 0

  @property
  def rows(self) -> int:
    """Sequences a batch feeds the model, a chosen and a rejected one per pair (what lm-train's
    tokens/s and MFU count)."""
    return 2 * self.batch_size


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt: tuple[int, ...]
  chosen: tuple[int, ...]
  rejected: tuple[int, ...]


def read_pairs(path: str) -> list[tuple[str, dict]]:
  """(where: "path:line", record) of every record of a preference JSONL file, checked (one
  UserError naming file and line)."""
  records = []
  for n, record in read_jsonl(path, missing=f"preference file not found: {path!r}"):
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str)
                                               for k in ("chosen", "rejected")):
      raise UserError(f"{path}:{n}: expected an object with string 'chosen' and 'rejected'")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) and not (isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and
        isinstance(m.get("content"), str) for m in prompt)):
      raise UserError(f"{path}:{n}: 'prompt' must be a string or a list of "
                      "{'role': str, 'content': str} messages")
    records.append((f"{path}:{n}", record))
  if not records:
    raise UserError(f"{path} holds no preference pairs")
  return records


def render_pair(tokenizer: tokenizers.Tokenizer, prompt, reply: str, template: str):
  """(prompt ids, response ids) of a prompt (str or chat) and the assistant's reply, as
  instruction tuning encodes the conversation (start ids and all)."""
  messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
  ids, weights = chat_templates.encode_conversation(
      messages + [{"role": "assistant", "content": reply}], template, tokenizer)
  end = len(weights)
  while end and not weights[end - 1]:  # text after the closing EOS (e.g. a newline)
    end -= 1
  split = end
  while split and weights[split - 1]:
    split -= 1
  return ids[:split], ids[split:end]


def encode_pairs(tokenizer: tokenizers.Tokenizer, records, seq_len: int,
                 template: str = "plain") -> tuple[list, int]:
  """(Pairs that fit seq_len + 1 tokens, number dropped) - see the module docstring.

  records: read_pairs' (where, record); a record the template cannot render is a UserError
  naming its file and line."""
  pairs, dropped = [], 0
  for where, record in records:
    try:
      prompt_ids, chosen = render_pair(tokenizer, record["prompt"], record["chosen"], template)
      prompt_again, rejected = render_pair(tokenizer, record["prompt"], record["rejected"],
                                           template)
    except UserError as e:
      raise UserError(f"{where}: {e}") from None
    if prompt_again != prompt_ids:
      raise UserError(f"{where}: chat template {template!r} renders the prompt differently "
                      "before the chosen and the rejected reply")
    room = seq_len + 1 - max(len(chosen), len(rejected))
    if room < 1 or not prompt_ids or not chosen or not rejected:
      dropped += 1
      continue
    pairs.append(Pair(tuple(prompt_ids[-room:]), tuple(chosen), tuple(rejected)))
  return pairs, dropped


def pair_rows(pairs, seq_len: int) -> dict[str, np.ndarray]:
  """Batch arrays of `pairs` (None: a padding pair): chosen_/rejected_ inputs, targets and
  weights [P, seq_len] (weight 1 on response targets) and pair_weights [P]."""
  out = {f"{side}_{k}": np.zeros((len(pairs), seq_len), np.int32)
         for side in ("chosen", "rejected") for k in ("inputs", "targets", "weights")}
  out["pair_weights"] = np.array([p is not None for p in pairs], np.float32)
  for r, pair in enumerate(pairs):
    if pair is None:
      continue
    for side in ("chosen", "rejected"):
      seq = pair.prompt + getattr(pair, side)
      out[f"{side}_inputs"][r, :len(seq) - 1] = seq[:-1]
      out[f"{side}_targets"][r, :len(seq) - 1] = seq[1:]
      out[f"{side}_weights"][r, len(pair.prompt) - 1:len(seq) - 1] = 1
  return out


def score_pairs(model, pairs) -> tuple[np.ndarray, np.ndarray]:
  """(log p(chosen | prompt) [N], log p(rejected | prompt) [N]) with `model.score` (lm.load)."""
  if not pairs:
    return np.zeros(0), np.zeros(0)
  contexts = [list(p.prompt) for p in pairs] * 2
  responses = [list(p.chosen) for p in pairs] + [list(p.rejected) for p in pairs]
  logps, _ = model.score(contexts, responses)
  return logps[:len(pairs)], logps[len(pairs):]


@functools.cache
def _reference_model(model_dir: str):
  from lm.api import load  # pylint: disable=import-outside-toplevel  (lm.api imports training)
  return load(model_dir)


def reference_key(model, pairs) -> str:
  """A hash of the reference's config and weights and of the tokenized pairs."""
  h = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True).encode())
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(model.params)[0],
                           key=lambda x: jax.tree_util.keystr(x[0])):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  for p in pairs:
    h.update(np.asarray([len(p.prompt), len(p.chosen), len(p.rejected)], np.int64).tobytes())
    h.update(np.asarray(p.prompt + p.chosen + p.rejected, np.int64).tobytes())
  return h.hexdigest()


def cached_reference_logps(model, pairs, path: str | None):
  """score_pairs of the reference, read from the .npz at `path` when its hash matches, else
  computed (and written there, atomically, by process 0; path None: not written)."""
  key = reference_key(model, pairs)
  if path and os.path.exists(path):
    with np.load(path) as saved:
      if str(saved["key"]) == key:
        return saved["chosen"], saved["rejected"]
    print(f"note: {path} is stale (reference or pairs changed); recomputing")
  chosen, rejected = score_pairs(model, pairs)
  if path and jax.process_index() == 0:
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, key=np.array(key), chosen=chosen, rejected=rejected)
    os.replace(tmp, path)
  return chosen, rejected


class PreferenceBatches:
  """Batches of pairs. Training: endless; epoch e visits the pairs in the permutation drawn
  from (seed, e), a batch is the next batch_size of them (the remainder of an epoch is
  skipped); `state` is the number of batches read. Other splits: one pass in file order, the
  last batch padded with zero-weight pairs. Each process takes its slice of every batch."""

  def __init__(self, cfg: PreferenceInputConfig, split: str, start: int = 0):
    if cfg.reference_logps not in REFERENCE_MODES:
      raise UserError(f"PreferenceInputConfig.reference_logps must be one of "
                      f"{', '.join(REFERENCE_MODES)}, not {cfg.reference_logps!r}")
    if not cfg.reference_dir:
      raise UserError("PreferenceInputConfig.reference_dir is not set (the model directory "
                      "whose tokenizer encodes the pairs, normally INIT_FROM)")
    self.reference_dir = os.path.abspath(os.path.expanduser(cfg.reference_dir))
    tokenizer = tokenizers.load_tokenizer(self.reference_dir)
    if tokenizer is None:
      raise UserError(f"{self.reference_dir} has no tokenizer to encode the pairs with")
    path = cfg.train_path if split == "train" else cfg.validation_path
    self.pairs, dropped = ([], 0) if not path and split != "train" else encode_pairs(
        tokenizer, read_pairs(path), cfg.seq_len, cfg.template)
    if dropped:
      print(f"note: {dropped} pairs of {path} dropped (a response longer than SEQ_LEN)")
    self.train = split == "train"
    if self.train and len(self.pairs) < cfg.batch_size:
      raise UserError(f"{path} has {len(self.pairs)} usable pairs, fewer than "
                      f"BATCH_SIZE={cfg.batch_size}")
    per_process = cfg.batch_size // jax.process_count()
    self._rows = slice(jax.process_index() * per_process,
                       (jax.process_index() + 1) * per_process)
    self.cfg, self.state, self.split = cfg, start, split
    self.vocab_size = tokenizer.vocab_size
    self._cache_path = None
    self._reference = None  # cached mode: (chosen [N], rejected [N]), computed on first use

  def start_run(self, model_dir: str):
    """Called by lm-train once the run directory is made: cache the reference log-probs of
    the training split there and give the run the reference's tokenizer and
    generation_config.json (for lm.load), with the ids closing the pairs' responses."""
    if self.train and self.cfg.reference_logps == "cached":
      self._cache_path = os.path.join(model_dir, CACHE_FILE)
    if jax.process_index() != 0:
      return
    target = tokenizers.tokenizer_dir(model_dir)
    if not os.path.exists(target):
      shutil.copytree(tokenizers.tokenizer_dir(self.reference_dir), target)
    save_generation_config(model_dir, self.reference_dir,
                           {r[-1] for p in self.pairs for r in (p.chosen, p.rejected)})

  def restore(self, batches: int):
    self.state = batches

  def __iter__(self):
    return self

  def _indices(self) -> list:
    """This process's pair indices of the next batch (None: padding)."""
    size = self.cfg.batch_size
    if self.train:
      epoch, index = divmod(self.state, len(self.pairs) // size)
      perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.pairs))
      batch = perm[index * size:(index + 1) * size].tolist()
    else:
      batch = list(range(self.state * size, min((self.state + 1) * size, len(self.pairs))))
      if not batch:
        raise StopIteration
      batch += [None] * (size - len(batch))
    return batch[self._rows]

  def _reference_logps(self, indices):
    mode, n = self.cfg.reference_logps, len(indices)
    if mode == "none":
      return np.zeros(n), np.zeros(n)
    model = _reference_model(self.reference_dir)
    if self.cfg.seq_len > model.config.max_len:
      raise UserError(f"SEQ_LEN={self.cfg.seq_len} exceeds the reference's max_len="
                      f"{model.config.max_len}")
    real = [i for i in indices if i is not None]
    if mode == "online":
      chosen, rejected = score_pairs(model, [self.pairs[i] for i in real])
      index = {i: k for k, i in enumerate(real)}
    else:
      if self._reference is None:
        self._reference = cached_reference_logps(model, self.pairs, self._cache_path)
      (chosen, rejected), index = self._reference, {i: i for i in real}
    pick = lambda x: np.array([0.0 if i is None else x[index[i]] for i in indices])
    return pick(chosen), pick(rejected)

  def __next__(self) -> dict[str, np.ndarray]:
    indices = self._indices()
    batch = pair_rows([None if i is None else self.pairs[i] for i in indices], self.cfg.seq_len)
    chosen, rejected = self._reference_logps(indices)
    batch["reference_chosen"] = chosen.astype(np.float32)
    batch["reference_rejected"] = rejected.astype(np.float32)
    self.state += 1
    return batch


@gin.configurable
def preference_batches(cfg: PreferenceInputConfig, split: str, start: int = 0):
  """lm-train's batches_fn for preference pairs (`train.batches_fn = @preference_batches`)."""
  return PreferenceBatches(cfg, split, start)
