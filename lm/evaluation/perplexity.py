"""Perplexity and bits per byte of whole documents, with rolling windows at any length.

Tasks:
  ppl:<file or glob>        .jsonl / .jsonl.gz: one document per record (its "text" field);
                            any other file: the whole file is one document (UTF-8)
  seqio:<task>[:<split>]    a registered SeqIO task's split (default "validation"), read as
                            documents and tokenized with the task's own vocabulary (an
                            instruction task: each example's tokens as trained on; imports
                            lm.data, hence TensorFlow, only here)

Each document is preceded by the prefix token (BOS, else EOS) and scored in windows of
`seq_len` tokens (default: the model's max_len) that cover it exactly once: `stride` =
seq_len (default) gives disjoint windows as lm-evaluation-harness' `loglikelihood_rolling`;
a smaller stride lets every scored token after the first window see at least
seq_len - stride earlier tokens. Metrics as the harness's wikitext task reports them:
word_perplexity = exp(-LL / words), byte_perplexity = exp(-LL / UTF-8 bytes), bits_per_byte
= -LL / bytes / ln 2 (words counted as re.split(r"\\s+", text)), plus token_perplexity =
exp(-LL / tokens); the harness gives no stderr for these (None here too).
"""
import glob
import gzip
import math
import os
import re

import numpy as np

from lm import jsonl
from lm.errors import UserError
from lm.evaluation.registry import TaskResult, register


def window_logprobs(model, docs_ids, seq_len: int | None = None, stride: int | None = None,
                    batch_tokens: int = 4096) -> np.ndarray:
  """Total log-likelihood [N] of token documents in rolling windows of seq_len tokens."""
  cfg = model.config
  seq_len = cfg.max_len if seq_len is None else seq_len
  stride = seq_len if stride is None else stride
  if seq_len < 1:
    raise UserError(f"--seq_len must be >= 1, got {seq_len}")
  if seq_len > cfg.max_len and cfg.positions == "learned":
    raise UserError(f"--seq_len {seq_len} exceeds the learned position table ({cfg.max_len})")
  if not 1 <= stride <= seq_len:
    raise UserError(f"--stride must be in [1, seq_len={seq_len}], got {stride}")
  return model.score_rolling(docs_ids, context_len=seq_len - stride + 1,
                             batch_tokens=max(batch_tokens, seq_len), window=seq_len)


def perplexity_result(texts, docs_ids, lls) -> TaskResult:
  """Word / byte / token perplexity and bits per byte from per-document log-likelihoods."""
  total = float(np.sum(lls))
  words = sum(len(re.split(r"\s+", t)) for t in texts)
  nbytes = sum(len(t.encode("utf-8")) for t in texts)
  tokens = sum(len(ids) for ids in docs_ids)
  values = {"word_perplexity": math.exp(-total / words),
            "byte_perplexity": math.exp(-total / nbytes),
            "bits_per_byte": -total / nbytes / math.log(2),
            "token_perplexity": math.exp(-total / tokens)}
  examples = [{"text": t[:200], "tokens": len(ids), "loglikelihood": float(ll)}
              for t, ids, ll in list(zip(texts, docs_ids, lls))[:3]]
  return TaskResult(metrics=values, stderr={k: None for k in values}, num_examples=len(texts),
                    examples=examples)


def read_documents(pattern: str) -> list[str]:
  """Documents of text / JSONL files matching `pattern` (sorted paths); a JSONL line that is
  not an object with a string "text" field is a UserError naming the file and line."""
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise UserError(f"no file matches {pattern!r}")
  docs = []
  for path in paths:
    if path.endswith((".jsonl", ".jsonl.gz")):
      for n, record in jsonl.read_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
          raise UserError(f'{path}:{n}: expected an object with a string "text" field')
        docs.append(record["text"])
      continue
    opener = gzip.open if path.endswith(".gz") else open
    try:
      with opener(path, "rt", encoding="utf-8") as f:
        docs.append(f.read())
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: invalid UTF-8 ({e})") from None
    except (gzip.BadGzipFile, EOFError) as e:
      raise UserError(f"{path}: not a complete gzip file ({e})") from None
  docs = [d for d in docs if d]
  if not docs:
    raise UserError(f"{pattern!r}: no non-empty document")
  return docs


@register("ppl", parametric=True)
def file_perplexity(model, *, arg, limit=None, batch_size=16, seq_len=None, stride=None, **_):
  """Perplexity of the documents in the files `arg` (a path or glob)."""
  texts = read_documents(arg)[:limit]
  docs_ids = [model.encode(t) for t in texts]
  lls = window_logprobs(model, docs_ids, seq_len, stride, batch_tokens=batch_size * 256)
  return perplexity_result(texts, docs_ids, lls)


@register("seqio", parametric=True)
def seqio_perplexity(model, *, arg, limit=None, batch_size=16, seq_len=None, stride=None, **_):
  """Perplexity of a SeqIO task's split, `arg` = "task[:split]"."""
  from lm.data import documents  # TensorFlow only on this path
  name, _, split = arg.partition(":")
  texts, docs_ids = documents.documents(name, split or "validation", limit)
  lls = window_logprobs(model, docs_ids, seq_len, stride, batch_tokens=batch_size * 256)
  return perplexity_result(texts, docs_ids, lls)
