"""Multiple-choice benchmarks with lm-evaluation-harness 0.4.13's prompts and metrics.

Files come from --data_dir (the layout of ../shared/evaldata; see its README). Each file's
fields are mapped onto the harness's doc_to_text / doc_to_choice / target:

| task | context | continuation(s) | metrics |
|---|---|---|---|
| arc_easy, arc_challenge | "Question: {q}\nAnswer:" | " {choice}" | acc, acc_norm |
| piqa | "Question: {goal}\nAnswer:" | " {sol}" | acc, acc_norm |
| boolq | "{passage}\nQuestion: {question}?\nAnswer:" | " no", " yes" | acc |
| copa | "{premise without its last character} because/therefore" | "  {choice, first letter lower-cased}" | acc |
| winogrande | sentence up to "_" + option (one context per option) | " {rest of the sentence}" | acc |

acc: the argmax of summed log-likelihoods is the gold; acc_norm: the argmax after dividing by
the choice's length in characters; ties go to the first choice. --limit N scores the first N
documents in file order. Few-shot examples come from the same file (lm.evaluation.fewshot:
by default drawn as the harness draws them, so few-shot prompts equal the harness's).
"""
import dataclasses
import os
from typing import Sequence

import numpy as np

from lm import jsonl
from lm.errors import UserError
from lm.evaluation import fewshot, metrics
from lm.evaluation.registry import TaskResult, register

NUM_RENDERED = 3  # examples kept in the report per task


@dataclasses.dataclass
class Doc:
  """A document as the harness sees it. For multiple-input tasks (Winogrande) `contexts`
  holds one context per choice and `continuation` the shared target."""
  query: str
  choices: list[str]
  gold: int
  contexts: list[str] | None = None
  continuation: str | None = None

  def pairs(self, prefix: str = "", delimiter: str = " ") -> list[tuple[str, str]]:
    """The (context, continuation) requests of this document after a few-shot prefix."""
    if self.contexts is not None:
      return [(prefix + c, delimiter + self.continuation) for c in self.contexts]
    return [(prefix + self.query, delimiter + c) for c in self.choices]

  def rendered(self, delimiter: str = " ") -> str:
    """The document with its answer, as a few-shot example."""
    if self.contexts is not None:
      return self.contexts[self.gold] + delimiter + self.continuation
    return self.query + delimiter + self.choices[self.gold]


def read_jsonl(path: str) -> list[dict]:
  """The records of a benchmark's JSON-lines file; a missing or malformed file is a UserError."""
  return [record for _, record in jsonl.read_jsonl(
      path, missing=f"{path} does not exist (is --data_dir right? see "
                    "../shared/evaldata/README.md)")]


def _arc(name):
  def load(data_dir):
    return [Doc(r["query"] + "\nAnswer:", list(r["choices"]), int(r["gold"]))
            for r in read_jsonl(os.path.join(data_dir, "arc", f"{name}.jsonl"))]
  return load


def _piqa(data_dir):
  docs = read_jsonl(os.path.join(data_dir, "piqa", "valid.jsonl"))
  labels_path = os.path.join(data_dir, "piqa", "valid-labels.lst")
  if not os.path.exists(labels_path):
    raise UserError(f"{labels_path} does not exist")
  with open(labels_path) as f:
    labels = [int(line) for line in f if line.strip()]
  if len(labels) != len(docs):
    raise UserError(f"{labels_path}: {len(labels)} labels for {len(docs)} documents")
  return [Doc(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], label)
          for r, label in zip(docs, labels)]


def _boolq(data_dir):
  docs = []
  for r in read_jsonl(os.path.join(data_dir, "boolq", "boolq.jsonl")):
    # llm-foundry's "Passage: {passage}\nQuestion: {question}?" -> the harness's prompt
    passage = r["query"].removeprefix("Passage: ")
    docs.append(Doc(passage + "\nAnswer:", ["no", "yes"], int(r["gold"])))
  return docs


def _copa(data_dir):
  docs = []
  for r in read_jsonl(os.path.join(data_dir, "copa", "copa.jsonl")):
    # llm-foundry's "{premise[:-1]}, {connector}" -> the harness's "{premise[:-1]} {connector}"
    premise, connector = r["query"].rsplit(", ", 1)
    choices = [" " + c[0].lower() + c[1:] for c in r["choices"]]
    docs.append(Doc(f"{premise} {connector}", choices, int(r["gold"])))
  return docs


def _winogrande(data_dir):
  return [Doc("", list(r["context_options"]), int(r["gold"]), contexts=list(r["context_options"]),
              continuation=r["continuation"])
          for r in read_jsonl(os.path.join(data_dir, "winogrande", "winogrande.jsonl"))]


# name -> (loader, metrics the harness reports)
TASKS = {
    "arc_easy": (_arc("arc_easy"), ("acc", "acc_norm")),
    "arc_challenge": (_arc("arc_challenge"), ("acc", "acc_norm")),
    "piqa": (_piqa, ("acc", "acc_norm")),
    "boolq": (_boolq, ("acc",)),
    "copa": (_copa, ("acc",)),
    "winogrande": (_winogrande, ("acc",)),
}


def load_docs(task: str, data_dir: str) -> list[Doc]:
  """The documents of a multiple-choice task in file order."""
  return TASKS[task][0](data_dir)


def evaluate_docs(model, task: str, docs: Sequence[Doc], pool: Sequence[Doc] | None = None, *,
                  num_fewshot: int = 0, limit: int | None = None, seed: int = 1234,
                  batch_size: int = 16, metric_names: Sequence[str] = ("acc", "acc_norm"),
                  fewshot_sampling: str = "harness") -> TaskResult:
  """Scores docs[:limit] and returns the harness's metrics with stderr.

  Few-shot examples come from `pool` with lm.evaluation.fewshot's sampler `fewshot_sampling`:
  by default the docs themselves, never drawing the scored document; other tasks
  (robustness: perturbed prompts) pass the clean documents, index-aligned with `docs`, and
  document i then never draws (a copy of) pool item i, so its examples are the clean run's."""
  pool = list(docs) if pool is None else list(pool)
  docs = list(docs)[:limit] if limit is not None else list(docs)
  shots = fewshot.draws(fewshot_sampling, pool, docs, num_fewshot, seed, task,
                        exclude=pool[:len(docs)])
  items, prefixes = [], []
  for doc, drawn in zip(docs, shots):
    prefixes.append(fewshot.join_examples([pool[j].rendered() for j in drawn]))
    items.append(doc.pairs(prefixes[-1]))
  scored = model.score_choices(items, batch_size=batch_size)
  per_doc = {name: [] for name in metric_names}
  examples = []
  for i, (doc, (lls, _)) in enumerate(zip(docs, scored)):
    pred, pred_norm = metrics.choose(lls, doc.choices)
    values = {"acc": float(pred == doc.gold), "acc_norm": float(pred_norm == doc.gold)}
    for name in metric_names:
      per_doc[name].append(values[name])
    if i < NUM_RENDERED:
      examples.append({"requests": [list(p) for p in items[i]], "gold": doc.gold,
                       "loglikelihoods": [float(x) for x in lls], "pred": pred,
                       "pred_norm": pred_norm})
  return TaskResult(metrics={n: float(np.mean(v)) if v else float("nan")
                             for n, v in per_doc.items()},
                    stderr={n: metrics.mean_stderr(v) for n, v in per_doc.items()},
                    num_examples=len(docs), examples=examples)


def _make_task(name: str):
  loader, metric_names = TASKS[name]

  def task(model, *, data_dir, num_fewshot=0, limit=None, seed=1234, batch_size=16,
           fewshot_sampling="harness", **_):
    docs = loader(data_dir)
    return evaluate_docs(model, name, docs, num_fewshot=num_fewshot, limit=limit, seed=seed,
                         batch_size=batch_size, metric_names=metric_names,
                         fewshot_sampling=fewshot_sampling)
  task.__doc__ = f"{name}: lm-evaluation-harness prompts, metrics {', '.join(metric_names)}."
  return task


for _name in TASKS:
  register(_name)(_make_task(_name))
