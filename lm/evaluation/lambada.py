"""LAMBADA (OpenAI's detokenized test set): last-word accuracy and perplexity.

As lm-evaluation-harness' `lambada_openai`: context = the text before the last space,
continuation = " " + the last word; acc = the whole continuation is the greedy choice (every
token the argmax); perplexity = exp(-mean over documents of the continuation's summed
log-probability), its stderr bootstrapped (the harness bootstraps it too).
"""
import math
import os

import numpy as np

from lm.evaluation import fewshot, metrics
from lm.evaluation.multiple_choice import NUM_RENDERED, read_jsonl
from lm.evaluation.registry import TaskResult, register


def _perplexity(lls) -> float:
  return math.exp(-float(np.mean(lls)))


@register("lambada_openai")
def lambada_openai(model, *, data_dir, num_fewshot=0, limit=None, seed=1234, batch_size=16,
                   fewshot_sampling="harness", **_):
  """Last-word accuracy and perplexity on lambada/lambada_openai.jsonl."""
  records = read_jsonl(os.path.join(data_dir, "lambada", "lambada_openai.jsonl"))
  docs = records[:limit] if limit is not None else records
  contexts, targets = [], []
  texts = [r["context"] + " " + r["continuation"] for r in records]
  shots = fewshot.draws(fewshot_sampling, texts, texts[:len(docs)], num_fewshot, seed,
                        "lambada_openai")
  for r, drawn in zip(docs, shots):
    contexts.append(fewshot.join_examples([texts[j] for j in drawn]) + r["context"])
    targets.append(" " + r["continuation"])
  lls, greedy = model.score(contexts, targets, batch_tokens=max(batch_size, 1) * 256)
  acc = greedy.astype(np.float64)
  examples = [{"context": c, "target": t, "loglikelihood": float(ll), "greedy": bool(g)}
              for c, t, ll, g in zip(contexts[:NUM_RENDERED], targets, lls, greedy)]
  return TaskResult(
      metrics={"perplexity": _perplexity(lls), "acc": float(acc.mean())},
      stderr={"perplexity": metrics.bootstrap_stderr(_perplexity, lls, seed=seed),
              "acc": metrics.mean_stderr(acc)},
      num_examples=len(docs), examples=examples)
