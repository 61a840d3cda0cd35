"""Data audit: who and what the corpus talks about, before and after cleaning.

For configurable term lists (default: gendered words x occupations, and a few
demographic groups) we count the documents that mention each term group and
the documents in which an occupation co-occurs with each gender, so that a
researcher sees e.g. that "nurse" appears with female words in 80 % of its
documents before training on the corpus. Counts are per document (a document
mentioning "she" ten times counts once), which is robust to repetition.
"""

import collections
import json
import re
from typing import Dict, List, Optional

DEFAULT_TERMS = {
    "attributes": {
        "male": ["he", "him", "his", "himself", "man", "men", "boy", "boys",
                 "father", "son", "brother", "husband", "king", "mr", "sir"],
        "female": ["she", "her", "hers", "herself", "woman", "women", "girl",
                   "girls", "mother", "daughter", "sister", "wife", "queen",
                   "mrs", "ms", "madam"],
    },
    "targets": {w: [w, w + "s"] for w in (
        "doctor", "nurse", "engineer", "teacher", "lawyer", "scientist",
        "programmer", "secretary", "manager", "soldier", "farmer", "cook",
        "pilot", "professor", "judge", "artist", "writer", "servant",
        "king", "queen")},
    "groups": {
        "christian": ["christian", "christians"],
        "muslim": ["muslim", "muslims"],
        "jewish": ["jewish", "jew", "jews"],
        "hindu": ["hindu", "hindus"],
        "buddhist": ["buddhist", "buddhists"],
        "african": ["african", "africans"],
        "asian": ["asian", "asians"],
        "european": ["european", "europeans"],
        "immigrant": ["immigrant", "immigrants"],
    },
}

_WORD = re.compile(r"[a-z]+")


def load_terms(path: Optional[str]) -> Dict[str, Dict[str, List[str]]]:
  """The term lists from a JSON file shaped like DEFAULT_TERMS, or those."""
  if not path:
    return DEFAULT_TERMS
  with open(path) as f:
    terms = json.load(f)
  return {k: terms.get(k, {}) for k in ("attributes", "targets", "groups")}


def audit_counts(text: str, terms, prefix: str) -> collections.Counter:
  """Per-document counts, keyed "<prefix>/<kind>/<name>[/<attribute>]"."""
  words = set(_WORD.findall(text.lower()))
  counts = collections.Counter({f"{prefix}/docs": 1})
  present = {kind: [name for name, ws in terms[kind].items()
                    if not words.isdisjoint(ws)]
             for kind in ("attributes", "targets", "groups")}
  for kind, names in present.items():
    for name in names:
      counts[f"{prefix}/{kind}/{name}"] += 1
  for target in present["targets"]:
    for attribute in present["attributes"]:
      counts[f"{prefix}/cooc/{target}/{attribute}"] += 1
  return counts


def summarize(stats, terms, prefix: str) -> dict:
  """Turns summed counts into the report's audit section for one side."""
  get = lambda *parts: int(stats.get("/".join((prefix,) + parts), 0))
  attrs = list(terms["attributes"])
  return {
      "docs": get("docs"),
      "attributes": {a: get("attributes", a) for a in attrs},
      "groups": {g: get("groups", g) for g in terms["groups"]},
      "targets": {t: {"docs": get("targets", t),
                      **{a: get("cooc", t, a) for a in attrs}}
                  for t in terms["targets"]},
  }
