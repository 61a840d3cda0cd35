"""Prompt robustness: clean vs perturbed accuracy of multiple-choice tasks, and AdvGLUE.

`robust:<task>[:<perturbation>+...]` (e.g. robust:arc_easy:typo@0.1+stress) scores a
multiple-choice task (arc_easy, arc_challenge, piqa, boolq, copa, winogrande,
advglue_<sub-task>) once clean and once per perturbation, with
the same documents, choices, few-shot examples and scoring, and reports
  acc               clean accuracy;
  acc_<p>           accuracy with perturbation p applied to every scored prompt;
  pdr_<p>           PromptBench's performance drop rate 1 - acc_<p> / acc (NaN if acc = 0).
Perturbations (lm.evaluation.perturb; seeded per document by (--seed, document index), so a
run is reproducible and independent of --limit and batching):
  typo[@rate]                      mixed typos (swap/delete/insert/keyboard) in `rate` of the
  typo_swap|_delete|_insert|_keyboard[@rate]   words (default 0.2), or one kind only;
  synonym[@rate]                   listed words swapped for listed synonyms (default 0.5);
  stress, checklist                a distracting suffix (StressTest's tautologies, CheckList's
                                   irrelevant URL/handle) after the task's text;
  paraphrase_<variant>             the template rewritten (perturb.PARAPHRASES: short_cues,
                                   long_cues, instruction, instruction_short_cues).
The default set is typo, synonym, stress, checklist, paraphrase_short_cues,
paraphrase_instruction. Only the task's own text is perturbed: line-initial cue labels
("Question:", "Answer:", ...) and COPA's final connector are left alone, the suffix goes before
a final cue line, and Winogrande's sentence is perturbed once in the part shared by its
per-option contexts (a suffix does not apply there: the context ends mid-sentence). Choices
and few-shot examples stay clean.

`advglue` / `advglue_<sub-task>`: AdvGLUE dev (Wang et al. 2021), a fixed adversarial set,
prompted with lm-evaluation-harness' GLUE templates (its QQP prompt as in harness 0.3: the
0.4 YAML names fields QQP does not have), zero- or few-shot (examples from the same sub-task's
file, never the scored item: AdvGLUE has no training split). Metrics acc_<sub-task> and, for
`advglue`, their unweighted mean acc.
"""
import json
import math
import os
import re

import numpy as np

from lm.errors import UserError
from lm.evaluation import perturb
from lm.evaluation.multiple_choice import TASKS as MC_TASKS, Doc, evaluate_docs, load_docs
from lm.evaluation.registry import TaskResult, register

# -- AdvGLUE ----------------------------------------------------------------------------------
ADVGLUE_TASKS = ("sst2", "qqp", "mnli", "mnli-mm", "qnli", "rte")


def _sentence(text: str) -> str:
  text = text.strip()
  return text if text.endswith(".") else text + "."


def _advglue_doc(sub: str, r: dict) -> Doc:
  """One AdvGLUE record as the harness's GLUE prompt (choices in label order)."""
  if sub == "sst2":
    return Doc(f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
               ["negative", "positive"], int(r["label"]))
  if sub == "qqp":
    return Doc(f"Question 1: {r['question1']}\nQuestion 2: {r['question2']}\nQuestion: Do both "
               "questions ask the same thing?\nAnswer:", ["no", "yes"], int(r["label"]))
  if sub in ("mnli", "mnli-mm"):
    return Doc(f"{r['premise']}\nQuestion: {_sentence(r['hypothesis'])} True, False or "
               "Neither?\nAnswer:", ["True", "Neither", "False"], int(r["label"]))
  if sub == "qnli":
    return Doc(f"{r['question']}\n{r['sentence']}\nQuestion: Does this response answer the "
               "question?\nAnswer:", ["yes", "no"], int(r["label"]))
  return Doc(f"{r['sentence1']}\nQuestion: {r['sentence2']} True or False?\nAnswer:",
             ["True", "False"], int(r["label"]))  # rte


def advglue_docs(data_dir: str | None, sub: str) -> list[Doc]:
  """The documents of one AdvGLUE dev sub-task, in file order."""
  path = os.path.join(data_dir or "", "advglue", "dev.json")
  if not data_dir or not os.path.isfile(path):
    raise UserError(f"AdvGLUE file not found: {path} (see ../shared/evaldata/README.md)")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if sub not in data:
    raise UserError(f"{path} has no sub-task {sub!r} (has {sorted(data)})")
  return [_advglue_doc(sub, r) for r in data[sub]]


def _advglue_task(sub: str):
  def task(model, *, data_dir=None, num_fewshot=0, limit=None, seed=1234, batch_size=16,
           fewshot_sampling="harness", **_):
    return evaluate_docs(model, f"advglue_{sub}", advglue_docs(data_dir, sub),
                         num_fewshot=num_fewshot, limit=limit, seed=seed,
                         batch_size=batch_size, metric_names=("acc",),
                         fewshot_sampling=fewshot_sampling)
  task.__doc__ = f"AdvGLUE dev {sub}: accuracy with the harness's GLUE prompt."
  return task


for _sub in ADVGLUE_TASKS:
  register(f"advglue_{_sub.replace('-', '_')}")(_advglue_task(_sub))


@register("advglue")
def advglue(model, **kwargs) -> TaskResult:
  """AdvGLUE dev: acc_<sub-task> for the six sub-tasks and their unweighted mean `acc`
  (`limit` applies to each sub-task)."""
  metrics, stderr, n, examples = {}, {}, 0, []
  for sub in ADVGLUE_TASKS:
    result = _advglue_task(sub)(model, **kwargs)
    key = f"acc_{sub.replace('-', '_')}"
    metrics[key], stderr[key] = result.metrics["acc"], result.stderr["acc"]
    n += result.num_examples
    examples += result.examples[:1]
  metrics["acc"] = float(np.mean([metrics[f"acc_{s.replace('-', '_')}"] for s in ADVGLUE_TASKS]))
  errors = [stderr[f"acc_{s.replace('-', '_')}"] for s in ADVGLUE_TASKS]
  stderr["acc"] = (math.sqrt(sum(e * e for e in errors)) / len(errors)
                   if all(e is not None for e in errors) else None)
  return TaskResult(metrics, stderr, n, examples)


# -- perturbed multiple choice ----------------------------------------------------------------
DEFAULT_PERTURBATIONS = ("typo", "synonym", "stress", "checklist", "paraphrase_short_cues",
                         "paraphrase_instruction")
DEFAULT_RATES = {"typo": 0.2, "synonym": 0.5}
# Template text that is never perturbed: line-initial cue labels and COPA's connector.
TEMPLATE = re.compile(r"(?m)^[A-Z][A-Za-z0-9 ]{0,30}:|\b(because|therefore)\Z")
_TAIL = re.compile(r"(\n[A-Z][A-Za-z0-9 ]{0,30}:\s*|\s+(because|therefore))\Z")


def parse_perturbation(spec: str) -> tuple[str, float | None]:
  """'typo@0.3' -> ('typo', 0.3); 'stress' -> ('stress', None); unknown names: UserError."""
  name, _, rate = spec.partition("@")
  rates = ("typo", "synonym") + tuple(f"typo_{k}" for k in perturb.KINDS)
  known = rates + perturb.SUFFIX_KINDS + tuple(f"paraphrase_{v}" for v in perturb.PARAPHRASES)
  if name not in known:
    raise UserError(f"unknown perturbation {name!r}; known: {', '.join(known)}")
  if not rate:
    return name, DEFAULT_RATES.get(name.split("_")[0]) if name in rates else None
  if name not in rates:
    raise UserError(f"perturbation {name!r} takes no rate")
  try:
    value = float(rate)
  except ValueError:
    value = -1.0
  if not 0.0 < value <= 1.0:
    raise UserError(f"perturbation rate must be in (0, 1], got {rate!r}")
  return name, value


def perturb_text(text: str, name: str, rate: float | None, seed) -> str:
  """`text` (a task's prompt) with one perturbation; template cue words are kept."""
  if name == "synonym":
    return perturb.synonym_swap(text, rate, seed, protect=TEMPLATE)
  if name.startswith("typo"):
    kind = name.partition("_")[2] or "mixed"
    return perturb.typo(text, rate, seed, kind, protect=TEMPLATE)
  if name in perturb.SUFFIX_KINDS:
    tail = _TAIL.search(text)
    cut = tail.start() if tail else len(text)
    return perturb.distract(text[:cut], seed, name) + text[cut:]
  return perturb.paraphrase(text, name.removeprefix("paraphrase_"))


def perturb_doc(doc: Doc, name: str, rate: float | None, seed) -> Doc:
  """A copy of `doc` whose prompt is perturbed (choices untouched)."""
  if doc.contexts is None:
    return Doc(perturb_text(doc.query, name, rate, seed), doc.choices, doc.gold)
  if name.startswith("paraphrase"):
    contexts = [perturb_text(c, name, rate, seed) for c in doc.contexts]
  elif name in perturb.SUFFIX_KINDS:
    raise UserError(f"perturbation {name!r} does not apply to partial-scoring tasks "
                    "(their contexts end mid-sentence)")
  else:  # perturb the text shared by every option's context once, keep the options
    shared = os.path.commonprefix(doc.contexts)
    shared = shared[:shared.rfind(" ") + 1] if not shared.endswith(" ") else shared
    new = perturb_text(shared, name, rate, seed)
    contexts = [new + c[len(shared):] for c in doc.contexts]
  return Doc(doc.query, doc.choices, doc.gold, contexts, doc.continuation)


def task_docs(task: str, data_dir: str | None) -> list[Doc]:
  """The documents of a multiple-choice task robustness can perturb."""
  if task in MC_TASKS:
    return load_docs(task, data_dir)
  subs = {f"advglue_{s.replace('-', '_')}": s for s in ADVGLUE_TASKS}
  if task in subs:
    return advglue_docs(data_dir, subs[task])
  raise UserError(f"robustness needs a multiple-choice task, one of "
                  f"{', '.join(list(MC_TASKS) + list(subs))}; got {task!r}")


@register("robust", parametric=True)
def robust(model, *, arg, data_dir=None, num_fewshot=0, limit=None, seed=1234, batch_size=16,
           fewshot_sampling="harness", **_) -> TaskResult:
  """robust:<task>[:<perturbation>+...]: clean and perturbed accuracy and PDR (module doc)."""
  task, _, specs = arg.partition(":")
  # '+' separates perturbations: lm-eval's --tasks is already comma-separated
  perturbations = [parse_perturbation(s) for s in (specs.split("+") if specs
                                                   else DEFAULT_PERTURBATIONS)]
  docs = task_docs(task, data_dir)
  common = dict(num_fewshot=num_fewshot, limit=limit, seed=seed, batch_size=batch_size,
                metric_names=("acc",), fewshot_sampling=fewshot_sampling)
  clean = evaluate_docs(model, task, docs, **common)
  metrics, stderr = {"acc": clean.metrics["acc"]}, {"acc": clean.stderr["acc"]}
  examples = [dict(clean.examples[0], perturbation="none")] if clean.examples else []
  n = len(docs) if limit is None else min(limit, len(docs))
  for name, rate in perturbations:
    key = name if rate is None or rate == DEFAULT_RATES.get(name.split("_")[0]) \
        else f"{name}_{rate:g}".replace(".", "p")
    perturbed = [perturb_doc(d, name, rate, (seed, i)) for i, d in enumerate(docs[:n])]
    result = evaluate_docs(model, task, perturbed + docs[n:], pool=docs, **common)
    acc = result.metrics["acc"]
    metrics[f"acc_{key}"], stderr[f"acc_{key}"] = acc, result.stderr["acc"]
    metrics[f"pdr_{key}"] = 1.0 - acc / clean.metrics["acc"] if clean.metrics["acc"] else \
        float("nan")
    stderr[f"pdr_{key}"] = None
    if result.examples:
      examples.append(dict(result.examples[0], perturbation=key))
  return TaskResult(metrics, stderr, clean.num_examples, examples)
