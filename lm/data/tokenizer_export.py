"""Saves a SeqIO task's vocabulary as a model directory's tokenizer (read by lm.tokenizers).

The training loop calls `save_task_tokenizer` so that every run directory can turn text into
ids and back without TensorFlow: the character table goes to MODEL_DIR/tokenizer/chars.json,
a SentencePiece model is copied to MODEL_DIR/tokenizer/spm.model, an HF tokenizer's files
(lm.data.vocabularies.model_vocabulary) are copied as they are, with the generation_config.json
of the model directory they come from (its end-of-sequence ids) and the ids that close the
task's trained turns (lm.model_dir.save_generation_config).
"""
import json
import os
import shutil
import tempfile

import seqio
import tensorflow as tf

from lm import tokenizers
from lm.data.instruct import closing_ids
from lm.data.pipeline import vocabulary
from lm.data.vocabularies import CharVocabulary, TokenizerVocabulary, base_vocabulary
from lm.model_dir import save_generation_config


def save_task_tokenizer(task: str, model_dir: str, start_id: int | None = None) -> str | None:
  """Writes the tokenizer of a registered task to MODEL_DIR/tokenizer/; returns that directory,
  or None for a vocabulary lm.tokenizers cannot represent (the run then works on ids only).

  start_id: the id every training sequence started with (seqio's decoder inputs start with 0),
  saved as a char or SentencePiece tokenizer's BOS (start.json) so that prompts start the same.

  The directory is replaced as a whole (written beside it, then renamed), so a reader never
  sees half a tokenizer.
  """
  vocab = base_vocabulary(vocabulary(task))
  if isinstance(vocab, CharVocabulary):
    def write(tmp):
      with open(os.path.join(tmp, tokenizers.CHARS_FILE), "w", encoding="utf-8") as f:
        json.dump({"chars": vocab.chars}, f, ensure_ascii=False)
  elif isinstance(vocab, seqio.SentencePieceVocabulary) and not vocab.extra_ids:
    def write(tmp):  # the path may be on any TF filesystem (gs://...)
      tf.io.gfile.copy(vocab.sentencepiece_model_file, os.path.join(tmp, tokenizers.SPM_FILE))
  elif isinstance(vocab, TokenizerVocabulary):  # a model directory's HF tokenizer, as it is
    def write(tmp):
      for name in tokenizers.HF_TOKENIZER_FILES:
        if os.path.exists(os.path.join(vocab.directory, name)):
          shutil.copy(os.path.join(vocab.directory, name), tmp)
  else:
    return None
  target = tokenizers.tokenizer_dir(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tokenizer-", dir=model_dir)
  try:
    write(tmp)
    if start_id is not None and not isinstance(vocab, TokenizerVocabulary):
      with open(os.path.join(tmp, tokenizers.START_FILE), "w", encoding="utf-8") as f:
        json.dump({"bos_id": start_id}, f)
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(tmp, target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  source = (os.path.dirname(vocab.directory) if isinstance(vocab, TokenizerVocabulary)
            else None)  # a char table or SentencePiece model does not say where it came from
  save_generation_config(model_dir, source, closing_ids(task))
  return target
