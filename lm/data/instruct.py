"""Instruction tuning: SeqIO tasks of chats whose loss covers only the assistant's tokens.

`register_instruct_task` reads JSONL records ({"prompt", "response"} or {"messages": [...]}),
renders each with a chat template and tokenizes it once, at registration
(lm.data.chat_templates.encode_conversation: the ids the model is prompted with, start ids
first): bad records and template errors fail before training, naming file and line. Every
example carries "targets" (the token ids of the whole sequence) and "loss_weights" (1 on
assistant content and the EOS closing each assistant turn, 0 elsewhere).

An example's first token is an input only (`LossMaskFeatureConverter`), so an example of n
tokens fills n - 1 positions. One longer than SEQ_LEN + 1 tokens is dropped (overlong="drop",
the default) or cut to its first SEQ_LEN + 1 tokens (overlong="truncate"; dropped if no trained
token is left); either way the count is printed once per task and length (`overlong_counts`).
Examples are never split, so packing keeps each one whole in one row, apart from its
neighbours (segment ids, positions restarting at 0), with its own weights.
"""
import functools
import json
import os
from typing import Mapping

import gin
import numpy as np
import seqio
import tensorflow as tf

from lm.data import chat_templates
from lm.data.sources import check_files, _open
from lm.data.vocabularies import TokenizerVocabulary, base_vocabulary, task_tokenizer
from lm.errors import UserError

LOSS_WEIGHTS = "loss_weights"
OVERLONG = ("drop", "truncate")
_WEIGHTS_FEATURE = seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32)
_logged = set()
_tokenized = {}  # (files' paths, mtimes and sizes, vocabulary id, template) -> (vocabulary, splits)


def tokenize_conversation(messages, vocabulary: seqio.Vocabulary, template: str = "plain"
                          ) -> tuple[list[int], list[int]]:
  """(ids, loss weights) of one conversation rendered with `template` in `vocabulary`, as a
  run trained on it sees it (lm.data.chat_templates.encode_conversation)."""
  return chat_templates.encode_conversation(messages, template, task_tokenizer(vocabulary))


def _check_template(tokenizer, template: str):
  """A template whose markers are special tokens needs a vocabulary that has them."""
  if template == "llama3":
    for marker in (chat_templates.LLAMA3_BOS, chat_templates.LLAMA3_EOT):
      if len(tokenizer.encode(marker, add_special_tokens=False)) != 1:
        raise UserError(f"chat template 'llama3': the vocabulary has no single token for "
                        f"{marker} (use a Llama 3 tokenizer, or template 'plain')")


class TokenizedSource(seqio.DataSource):
  """Examples tokenized in memory: {"targets", "loss_weights"} per example, per split.

  closing_ids: the ids that end the examples' trained runs (EOS, <|eot_id|>, ...): what a
  run tuned on them must stop generating at."""

  def __init__(self, splits: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """splits: name -> (ids of all examples end to end, their weights, row offsets (n + 1))."""
    self.examples = dict(splits)
    self.closing_ids = set()
    for ids, weights, offsets in splits.values():
      after = np.append(weights[1:], 0)
      after[offsets[1:] - 1] = 0  # an example's last token ends its run
      self.closing_ids.update(ids[(weights > 0) & (after == 0)].tolist())
    super().__init__(splits=tuple(splits), num_input_examples={
        s: len(offsets) - 1 for s, (_, _, offsets) in splits.items()}, caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split):
    return [split]

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
    del shuffle, seed, unused  # the task shuffles examples through its buffer
    if split not in self.examples:
      raise UserError(f"the instruction task has no {split!r} split: give its files (in "
                      f"instruct.gin: INSTRUCT_{split.upper()})" +
                      ("" if split == "train" else ", or set EVAL_STEPS=0"))
    ids, weights, offsets = (tf.constant(a) for a in self.examples[split])
    ds = tf.data.Dataset.range(len(self.examples[split][2]) - 1)
    if shard_info:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds.map(lambda i: {"targets": ids[offsets[i]:offsets[i + 1]],
                             LOSS_WEIGHTS: weights[offsets[i]:offsets[i + 1]]})


def _fit_length(dataset, sequence_length, output_features, task_name, overlong, lengths):
  """Drops (or truncates) examples longer than sequence_length["targets"] (SEQ_LEN + 1, see
  feature_converter); logs the counts."""
  del output_features
  length = sequence_length["targets"]
  if (task_name, length) not in _logged:
    _logged.add((task_name, length))
    for split, (over, total) in overlong_counts(lengths, length).items():
      if over:
        # printed, not logged: lm-train's quiet start hides library WARNING logs
        print(f"note: task {task_name} split {split}: {over} of {total} examples are longer "
              f"than {length} tokens: {'dropped' if overlong == 'drop' else 'truncated'}")
  if overlong == "drop":
    return dataset.filter(lambda ex: tf.size(ex["targets"]) <= length)
  dataset = dataset.map(lambda ex: {k: v[:length] for k, v in ex.items()})
  return dataset.filter(lambda ex: tf.reduce_any(ex[LOSS_WEIGHTS] > 0))


def overlong_counts(lengths: Mapping[str, np.ndarray], seq_len: int) -> dict:
  """{split: (examples longer than seq_len, examples)}."""
  return {split: (int(np.sum(n > seq_len)), len(n)) for split, n in lengths.items()}


def _read_split(pattern: str, vocabulary, tokenizer, template: str):
  """(ids, weights, offsets) of every record of the files matching `pattern`."""
  paths = check_files(pattern, "text", "text")
  stamps = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths)
  # gin builds InputConfig (so registers the task) more than once: tokenize unchanged files once
  key = (stamps, id(vocabulary), template)
  if key not in _tokenized or _tokenized[key][0] is not vocabulary:
    _tokenized[key] = vocabulary, _tokenize_files(stamps, tokenizer, template, pattern)
  return _tokenized[key][1]


def _tokenize_files(stamps, tokenizer, template: str, pattern: str):
  ids, weights, offsets = [], [], [0]
  for path, _, _ in stamps:
    with _open(path) as f:
      for line_no, raw in enumerate(f, 1):
        line = raw.decode("utf-8")
        if not line.strip():
          continue
        try:
          messages = chat_templates.record_messages(json.loads(line))
        except (json.JSONDecodeError, ValueError) as e:
          raise UserError(f"{path}:{line_no}: {e}") from None
        try:
          example_ids, example_weights = chat_templates.encode_conversation(
              messages, template, tokenizer)
        except UserError as e:
          raise UserError(f"{path}:{line_no}: {e}") from None
        ids += example_ids
        weights += example_weights
        offsets.append(len(ids))
  if len(offsets) == 1:
    raise UserError(f"no record in {pattern!r}")
  return (np.array(ids, np.int32), np.array(weights, np.int32), np.array(offsets, np.int64))


@gin.configurable
def register_instruct_task(name: str, split_patterns: Mapping[str, str], vocabulary,
                           template: str = "plain", overlong: str = "drop") -> str:
  """An instruction task over JSONL files (see the module docstring); returns `name`, so gin
  can bind `InputConfig.task = @register_instruct_task()`.

  split_patterns: split name -> glob of JSONL files (".gz" read too; '' leaves the split out,
  e.g. no validation with EVAL_STEPS=0). template: one of
  lm.data.chat_templates.TEMPLATES. overlong: "drop" or "truncate" examples over SEQ_LEN.
  vocabulary None (model_vocabulary of an unset INIT_FROM): registers nothing, returns None.
  """
  if template not in chat_templates.TEMPLATES:
    raise UserError(f"unknown chat template {template!r}; choose one of "
                    f"{chat_templates.TEMPLATES}")
  if overlong not in OVERLONG:
    raise UserError(f"overlong must be one of {OVERLONG}, not {overlong!r}")
  if vocabulary is None:  # lm-train stops on the missing INIT_FROM itself
    return None
  tokenizer = task_tokenizer(vocabulary)
  _check_template(tokenizer, template)
  splits = {split: _read_split(pattern, vocabulary, tokenizer, template)
            for split, pattern in split_patterns.items() if pattern}  # '': no such split
  lengths = {split: np.diff(offsets) for split, (_, _, offsets) in splits.items()}
  if name in seqio.TaskRegistry.names():  # gin may build the same config twice
    seqio.TaskRegistry.remove(name)
  _logged.difference_update({k for k in _logged if k[0] == name})
  seqio.TaskRegistry.add(
      name, source=TokenizedSource(splits),
      preprocessors=[functools.partial(_fit_length, task_name=name, overlong=overlong,
                                       lengths=lengths)],
      output_features={"targets": seqio.Feature(vocabulary, add_eos=False),
                       LOSS_WEIGHTS: _WEIGHTS_FEATURE},
      metric_fns=[])
  return name


class LossMaskFeatureConverter(seqio.FeatureConverter):
  """seqio's LM feature converter with the task's own loss weights, and nothing invented.

  Task features "targets" and "loss_weights" (equal lengths): each example is a whole
  sequence from its first token (the run's start ids, lm.tokenizers), which is an input only,
  as at inference: decoder_input_tokens are its tokens but the last, decoder_target_tokens
  its tokens but the first, decoder_loss_weights the targets' weights (padding 0); when packing,
  decoder_segment_ids and decoder_positions (0 at each example's first token). Rows hold the
  task length - 1 positions. (seqio's DecoderFeatureConverter instead feeds an id 0 before
  every example, which in an HF vocabulary is a real token.)

  seqio's packing and padding take every 0 for padding (a token 0 inside an example is lost and
  its neighbours shift), but in an HF vocabulary id 0 is a real token (GPT-2's "!", a BOS) and a
  weight 0 is a prompt token. So the features are packed as value + 1 and shifted back after.
  """

  TASK_FEATURES = {"targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                   LOSS_WEIGHTS: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {
      "decoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {"decoder_segment_ids": tf.int32, "decoder_positions": tf.int32}

  def _convert_example(self, features):
    real = features["targets"] > 0  # shifted: 0 only in padding
    converted = {
        "decoder_target_tokens": tf.where(real, features["targets"] - 1, 0),
        "decoder_input_tokens": tf.where(real, features["inputs"] - 1, 0),
        "decoder_loss_weights": tf.where(real, features[LOSS_WEIGHTS] - 1, 0),
    }
    if self.pack:
      converted["decoder_segment_ids"] = features["targets_segment_ids"]
      converted["decoder_positions"] = features["targets_positions"]
    return converted

  def _convert_features(self, ds, task_feature_lengths):
    def shift(ex):
      tokens, weights = ex["targets"] + 1, ex[LOSS_WEIGHTS] + 1
      return {"inputs": tokens[:-1], "targets": tokens[1:], LOSS_WEIGHTS: weights[1:]}
    ds = ds.map(shift).filter(lambda ex: tf.size(ex["targets"]) > 0)
    length = task_feature_lengths["targets"] - 1
    ds = self._pack_or_pad(ds, {"inputs": length, "targets": length, LOSS_WEIGHTS: length})
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    length = task_feature_lengths["targets"] - 1
    lengths = {k: length for k in self.MODEL_FEATURES}
    if self.pack:
      lengths.update({k: length for k in self.PACKING_FEATURE_DTYPES})
    return lengths


def closing_ids(task: str) -> set[int]:
  """The closing ids (TokenizedSource) of the instruction tasks in a task or mixture."""
  tasks = seqio.get_subtasks(seqio.get_mixture_or_task(task))
  return set().union(*(getattr(t.source, "closing_ids", set()) for t in tasks))


def feature_converter(task, seq_len: int, pack: bool, continuous: bool = False):
  """(convert(ds) -> model features of seq_len positions, the task feature lengths to read
  `task` (a seqio Task or Mixture) at).

  Tasks with loss weights: LossMaskFeatureConverter (examples of up to seq_len + 1 tokens).
  Tasks in a model's HF vocabulary: every piece of a document after the tokenizer's start ids
  (weight 0), every other token weight 1, through LossMaskFeatureConverter (id 0 is a real
  token there, and nothing is invented before a sequence). Others: seqio's
  DecoderFeatureConverter, whose id 0 before every piece is the start a char or SentencePiece
  run saves (start.json). continuous (corpus windows, which have no start): seq_len + 1 tokens
  per window, the first an input only.
  """
  if LOSS_WEIGHTS in task.output_features:
    lengths = {"targets": seq_len + 1, LOSS_WEIGHTS: seq_len + 1}
    return (lambda ds: LossMaskFeatureConverter(pack=pack)(ds, lengths)), lengths
  vocabulary = base_vocabulary(task.output_features["targets"].vocabulary)
  if isinstance(vocabulary, TokenizerVocabulary):
    start = [] if continuous or vocabulary.add_special_tokens else vocabulary.tokenizer.start_ids
    lengths = {"targets": seq_len + 1 - len(start)}
    def convert(ds):
      ds = ds.map(lambda ex: {
          "targets": tf.concat([tf.constant(start, tf.int32), ex["targets"]], 0),
          LOSS_WEIGHTS: tf.concat([tf.zeros(len(start), tf.int32),
                                   tf.ones_like(ex["targets"])], 0)})
      return LossMaskFeatureConverter(pack=pack)(
          ds, {"targets": seq_len + 1, LOSS_WEIGHTS: seq_len + 1})
    return convert, lengths
  if continuous:  # inputs [0] + window[:-1]: drop that first position
    lengths = {"targets": seq_len + 1}
    def convert(ds):
      ds = seqio.DecoderFeatureConverter(pack=False)(ds, lengths)
      return ds.map(lambda ex: {k: v[1:] for k, v in ex.items()})
    return convert, lengths
  lengths = {"targets": seq_len}
  return (lambda ds: seqio.DecoderFeatureConverter(pack=pack)(ds, lengths)), lengths
