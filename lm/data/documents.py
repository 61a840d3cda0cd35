"""Documents of a SeqIO task's split as text and token ids (lm-eval's `seqio:` perplexity tasks
import this lazily, so evaluation imports TensorFlow only on that path)."""
import functools

import seqio

import lm.data.pipeline  # noqa: F401  (registers the built-in tasks)
from lm.data.sources import RandomWindowsSource
from lm.errors import UserError


def _partial_keyword(task, name):
  for p in task.preprocessors:
    if isinstance(p, functools.partial) and name in p.keywords:
      return p.keywords[name]
  return None


def documents(name: str, split: str, limit: int | None = None):
  """(texts, token ids in the task's vocabulary) of the split's first `limit` documents.

  Corpus tasks (random windows over one text per split, e.g. tiny_shakespeare_char) give
  that text as one document; document tasks give their source's records in order; tasks whose
  source holds token ids (instruction tasks: each example's rendered chat) give those ids as
  they are trained on, and their decoded text (without special tokens)."""
  try:
    task = seqio.get_mixture_or_task(name)
  except (KeyError, ValueError):
    raise UserError(f"unknown SeqIO task {name!r}") from None
  if split not in task.source.splits:
    raise UserError(f"SeqIO task {name!r} has no split {split!r} (splits: "
                    f"{', '.join(task.source.splits)})")
  vocabulary = task.output_features["targets"].vocabulary
  if isinstance(task.source, RandomWindowsSource):
    texts = [_partial_keyword(task, "texts")[list(task.source.splits).index(split)]]
  else:
    key = (_partial_keyword(task, "key_map") or {}).get("targets", "targets")
    dataset = task.source.get_dataset(split=split, shuffle=False)
    if limit is not None:
      dataset = dataset.take(limit)
    values = [ex[key] for ex in dataset.as_numpy_iterator()]
    if values and not isinstance(values[0], bytes):  # already token ids
      ids = [[int(i) for i in v] for v in values]
      # _decode: seqio's decode stops at the first EOS, and a chat has one per assistant turn
      return [vocabulary._decode(v) for v in ids], ids  # pylint: disable=protected-access
    texts = [v.decode("utf-8") for v in values]
  texts = texts[:limit]
  return texts, [list(vocabulary.encode(t)) for t in texts]
