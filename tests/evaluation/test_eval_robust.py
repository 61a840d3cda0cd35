"""Prompt perturbations (lm.evaluation.perturb) change exactly what they claim, reproducibly;
robustness tasks (lm.evaluation.robustness) report clean/perturbed accuracy and PDR."""
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO
from lm.errors import UserError
from lm.evaluation import fewshot, perturb, registry, robustness
from lm.evaluation.multiple_choice import Doc

DATA = os.path.join(REPO, "..", "shared", "evaldata")
TEXT = ("Which of these would help a scientist measure the mass of a small rock quickly? "
        "Plants often grow toward light, and students study how big animals change their "
        "habitat over many years; the teacher said it is important to use the correct tool.")
WORDS = re.compile(r"[A-Za-z]+")


def _changed(before: str, after: str) -> list[tuple[str, str]]:
  """(old, new) word pairs that differ; asserts that nothing but letters changed."""
  assert WORDS.split(before) == WORDS.split(after)  # spaces and punctuation untouched
  return [(a, b) for a, b in zip(WORDS.findall(before), WORDS.findall(after)) if a != b]


def _eligible(text):
  return [w for w in WORDS.findall(text) if len(w) >= 3]


@pytest.mark.parametrize("kind", ["swap", "delete", "insert", "keyboard", "mixed"])
@pytest.mark.parametrize("rate", [0.1, 0.3, 1.0])
def test_typo_changes_one_character_in_the_requested_share_of_words(kind, rate):
  out = perturb.typo(TEXT, rate, seed=3, kind=kind)
  assert out == perturb.typo(TEXT, rate, seed=3, kind=kind)  # deterministic
  changed = _changed(TEXT, out)
  n = len(_eligible(TEXT))
  assert len(changed) == round(rate * n)
  for old, new in changed:
    assert len(old) >= 3
    if len(new) == len(old):
      diff = [i for i in range(len(old)) if old[i] != new[i]]
      if len(diff) == 2:  # a transposition of two adjacent letters
        assert kind in ("swap", "mixed")
        i, j = diff
        assert j == i + 1 and (old[i], old[j]) == (new[j], new[i])
      else:  # one letter replaced by a QWERTY neighbour, case kept
        assert kind in ("keyboard", "mixed") and len(diff) == 1
        i = diff[0]
        assert new[i].lower() in perturb.NEIGHBOURS[old[i].lower()]
        assert new[i].isupper() == old[i].isupper()
    elif len(new) == len(old) - 1:
      assert kind in ("delete", "mixed")
      assert any(old[:i] + old[i + 1:] == new for i in range(len(old)))
    else:
      assert kind in ("insert", "mixed") and len(new) == len(old) + 1
      assert any(new[:i] + new[i + 1:] == old and new[i].lower() in
                 perturb.NEIGHBOURS[new[i - 1].lower()] for i in range(1, len(new)))


def test_typo_seeds_differ_and_protected_words_stay():
  assert perturb.typo(TEXT, 0.3, seed=0) != perturb.typo(TEXT, 0.3, seed=1)
  assert perturb.typo(TEXT, 0.3, seed=(5, 0)) != perturb.typo(TEXT, 0.3, seed=(5, 1))
  prompt = "Question: " + TEXT + "\nAnswer:"
  out = perturb.typo(prompt, 1.0, seed=0, protect=robustness.TEMPLATE)
  assert out.startswith("Question: ") and out.endswith("\nAnswer:")
  assert len(_changed(prompt, out)) == len(_eligible(TEXT))
  assert perturb.typo(TEXT, 0.0, seed=0) == TEXT


def test_synonym_swap_replaces_only_listed_words_with_listed_synonyms():
  table = perturb.load_synonyms()
  listed = [w for w in WORDS.findall(TEXT) if w.lower() in table]
  assert len(listed) >= 8
  for rate in (0.25, 0.5, 1.0):
    out = perturb.synonym_swap(TEXT, rate, seed=11)
    assert out == perturb.synonym_swap(TEXT, rate, seed=11)
    changed = _changed(TEXT, out)
    assert len(changed) == round(rate * len(listed))
    for old, new in changed:
      assert new.lower() in table[old.lower()]
      assert new[0].isupper() == old[0].isupper()
  out = perturb.synonym_swap("Big tools", 1.0, seed=0, table={"big": ("large",)})
  assert out == "Large tools"


def test_synonym_list_is_well_formed():
  table = perturb.load_synonyms()
  assert len(table) > 100
  for word, synonyms in table.items():
    assert word.isalpha() and word.islower()
    assert synonyms and all(s.isalpha() and s.islower() and s != word for s in synonyms)
  assert os.path.exists(os.path.join(os.path.dirname(perturb.__file__), "assets", "LICENSE"))


def test_distracting_suffix_is_appended():
  for seed in range(6):
    out = perturb.distract(TEXT, seed, "stress")
    assert out.startswith(TEXT) and out[len(TEXT):] in perturb.STRESS_SUFFIXES
    out = perturb.distract(TEXT, seed, "checklist")
    assert out.startswith(TEXT)
    assert re.fullmatch(r" (https://t\.co/|@)[A-Za-z0-9]{10}", out[len(TEXT):])
  assert perturb.distract(TEXT, 4, "checklist") == perturb.distract(TEXT, 4, "checklist")


def test_paraphrase_rewrites_only_line_initial_cues():
  prompt = "Question: Is a Question: cue inside text kept?\nAnswer:"
  assert perturb.paraphrase(prompt, "short_cues") == "Q: Is a Question: cue inside text kept?\nA:"
  assert perturb.paraphrase(prompt, "long_cues").startswith("Query: Is a Question:")
  assert perturb.paraphrase(prompt, "instruction") == "Answer the following question.\n\n" + prompt
  with pytest.raises(ValueError):
    perturb.paraphrase(prompt, "nope")


def test_perturb_doc_keeps_template_choices_and_partial_scoring_options():
  doc = Doc("Question: " + TEXT + "\nAnswer:", ["a rock", "a tool"], 1)
  out = robustness.perturb_doc(doc, "stress", None, (0, 0))
  assert out.query.startswith(doc.query[:-len("\nAnswer:")]) and out.query.endswith("\nAnswer:")
  assert out.query.removesuffix("\nAnswer:")[len("Question: " + TEXT):] in perturb.STRESS_SUFFIXES
  assert out.choices == doc.choices and out.gold == 1
  copa = Doc("The rock was heavy because", ["x", "y"], 0)
  assert robustness.perturb_doc(copa, "typo", 1.0, 0).query.endswith(" because")
  wino = Doc("", ["Sarah", "Samantha"], 0, contexts=[TEXT + " Sarah", TEXT + " Samantha"],
             continuation=" was right.")
  out = robustness.perturb_doc(wino, "typo", 0.5, (1, 2))
  shared = out.contexts[0][:-len(" Sarah")]
  assert shared != TEXT and out.contexts == [shared + " Sarah", shared + " Samantha"]
  assert out.continuation == " was right."
  with pytest.raises(UserError, match="partial-scoring"):
    robustness.perturb_doc(wino, "checklist", None, 0)


@pytest.mark.parametrize("spec", ["typo@2", "typo@x", "stress@0.5", "shuffle"])
def test_bad_perturbation_is_a_user_error(spec):
  with pytest.raises(UserError):
    robustness.parse_perturbation(spec)


def test_robust_task_reports_clean_perturbed_accuracy_and_pdr(monkeypatch):
  """evaluate_docs replaced by a scorer that is right on every unperturbed document and on
  half of the perturbed ones: acc 1, perturbed acc 0.5, PDR 0.5; the pool stays clean."""
  docs = [Doc(f"Question: Which tool would a scientist use {i}?\nAnswer:", ["a", "b"], 0)
          for i in range(10)]
  monkeypatch.setattr(robustness, "task_docs", lambda task, data_dir: docs)
  seen = []

  def fake_evaluate(model, task, scored, pool=None, *, limit=None, **_):
    assert pool is None or pool is docs
    scored = list(scored)[:limit]
    seen.append([d.query for d in scored])
    right = [d.query == docs[i].query or i % 2 == 0 for i, d in enumerate(scored)]
    acc = sum(right) / len(right)
    return robustness.TaskResult({"acc": acc}, {"acc": 0.1}, len(scored), [])

  monkeypatch.setattr(robustness, "evaluate_docs", fake_evaluate)
  result = robustness.robust(None, arg="arc_easy:typo@1+stress+paraphrase_short_cues",
                             limit=6, seed=7)
  assert result.num_examples == 6
  for key in ("typo_1", "stress", "paraphrase_short_cues"):
    assert result.metrics[f"acc_{key}"] == 0.5
    assert result.metrics[f"pdr_{key}"] == 0.5
  assert result.metrics["acc"] == 1.0
  assert all(q.startswith("Q: ") for q in seen[3])
  again = []
  monkeypatch.setattr(robustness, "evaluate_docs",
                      lambda model, task, scored, pool=None, *, limit=None, **_:
                      again.append([d.query for d in list(scored)[:limit]]) or
                      robustness.TaskResult({"acc": 0.5}, {"acc": None}, 6, []))
  robustness.robust(None, arg="arc_easy:typo@1+stress+paraphrase_short_cues", limit=6, seed=7)
  assert again == seen  # same seed, same perturbed prompts


def test_advglue_documents_and_prompts():
  counts = {"sst2": 148, "qqp": 78, "mnli": 121, "mnli-mm": 162, "qnli": 148, "rte": 81}
  for sub, n in counts.items():
    docs = robustness.advglue_docs(DATA, sub)
    assert len(docs) == n and all(d.query.endswith("\nAnswer:") for d in docs)
  sst2 = robustness.advglue_docs(DATA, "sst2")[0]
  assert sst2.query.startswith("it 's an uneven treat") and sst2.choices[sst2.gold] == "positive"
  mnli = robustness.advglue_docs(DATA, "mnli")[0]  # label 2: contradiction
  assert mnli.choices[mnli.gold] == "False" and "True, False or Neither?" in mnli.query
  with pytest.raises(UserError, match="advglue"):
    robustness.advglue_docs("/nonexistent", "sst2")


def test_advglue_reports_each_subtask_and_their_mean(monkeypatch):
  accs = {"advglue_sst2": 0.5, "advglue_qqp": 0.25, "advglue_mnli": 0.0, "advglue_mnli-mm": 1.0,
          "advglue_qnli": 0.75, "advglue_rte": 0.5}
  monkeypatch.setattr(robustness, "evaluate_docs",
                      lambda model, task, docs, **kw: robustness.TaskResult(
                          {"acc": accs[task]}, {"acc": 0.1}, len(docs[:kw["limit"]]), []))
  result = robustness.advglue(None, data_dir=DATA, limit=5)
  assert result.metrics["acc_mnli_mm"] == 1.0 and result.metrics["acc_qqp"] == 0.25
  assert result.metrics["acc"] == pytest.approx(3.0 / 6)
  assert result.stderr["acc"] == pytest.approx((6 * 0.01) ** 0.5 / 6)
  assert result.num_examples == 30


@pytest.mark.parametrize("name, keys", [
    ("advglue_sst2", ["advglue_sst2"]),
    ("advglue", [f"advglue_{s}" for s in robustness.ADVGLUE_TASKS]),
    ("robust:arc_easy:stress", ["arc_easy", "arc_easy"]),  # clean, then perturbed
])
def test_per_document_fewshot_sampling_reaches_advglue_and_robust(name, keys, monkeypatch):
  """Each scored prompt's few-shot examples are the per_document sampler's draws for its
  (seed, task, document index), not the harness sampler's."""
  docs = [Doc(f"Question: q{i}?\nAnswer:", [f"a{i}", f"b{i}"], 0) for i in range(12)]
  monkeypatch.setattr(robustness, "advglue_docs", lambda data_dir, sub: docs)
  monkeypatch.setattr(robustness, "task_docs", lambda task, data_dir: docs)
  calls = []
  fake = SimpleNamespace(score_choices=lambda items, batch_size: (
      calls.append(items) or [(np.zeros(2), np.zeros(2, bool)) for _ in items]))
  registry.get_task(name)(fake, data_dir=None, num_fewshot=2, limit=4, seed=3, batch_size=1,
                          fewshot_sampling="per_document")
  assert len(calls) == len(keys)
  for key, items in zip(keys, calls):
    for i, item in enumerate(items):
      drawn = fewshot.sample_indices(len(docs), 2, 3, key, i)
      prefix = fewshot.join_examples([docs[j].rendered() for j in drawn])
      assert item[0][0].startswith(prefix) and item[0][0].count("\n\n") == 2, (key, i)
  harness = fewshot.harness_draws(docs, docs[:4], 2, 3)
  assert harness != [fewshot.sample_indices(12, 2, 3, keys[0], i) for i in range(4)]
