"""The floors of the house: a module imports only from its own floor or those below it.

From the bottom up (a package's modules share its floor; imports inside functions count):

  0  lm.errors, lm.jsonl                       no lm imports of their own
  1  lm.models, lm.tokenizers                  the model (with its LoRA and quantized variants)
  2  lm.sharding                               mesh, logical axes -> NamedShardings
  3  lm.model_dir                              model.json, params-only checkpoints, EOS ids
  4  lm.decoding, lm.scoring,                  what runs a model; files in and out
     lm.convert, lm.data
  5  lm.api                                    lm.load's LoadedModel
  6  lm.training                               the loop
  7  lm.finetuning, lm.compression,            features over a trained model; `lm` itself
     lm.evaluation, lm                         (lm.load / lm.evaluate) sits here
  8  lm.sweep
  9  lm.cli                                    the console scripts

No two files import each other, directly or round a circle. The TensorFlow boundary is one
way too: lm.data.inputs (importable without TensorFlow) builds SeqIO batches through
lm.data.pipeline inside a function, and pipeline takes an InputConfig without importing it.

The imports that still run upward are listed below with the work that removes them: the test
fails on a new one and also when a listed one is gone (delete its line then), so the list
only shrinks.
"""
import ast
import collections
import os

from conftest import REPO

FLOORS = [
    ("lm.errors", "lm.jsonl"),
    ("lm.models", "lm.tokenizers"),
    ("lm.sharding",),
    ("lm.model_dir",),
    ("lm.decoding", "lm.scoring", "lm.convert", "lm.data"),
    ("lm.api",),
    ("lm.training",),
    ("lm.finetuning", "lm.compression", "lm.evaluation", "lm"),
    ("lm.sweep",),
    ("lm.cli",),
]

# Upward imports still to remove (none: a new one is a layering defect, not an entry here).
PENDING_UPWARD = set()


def floor(module: str) -> int | None:
  """The floor of a module: that of the longest FLOORS prefix naming it (None: unplaced)."""
  best = None
  for i, names in enumerate(FLOORS):
    for name in names:
      if module == name or module.startswith(name + "."):
        if best is None or len(name) > len(best[1]):
          best = (i, name)
  return None if best is None else best[0]


def import_graph(root: str) -> dict[str, set[str]]:
  """module -> the lm modules it imports anywhere in its file (top level or in functions)."""
  files = {}
  for directory, _, names in os.walk(os.path.join(root, "lm")):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        files[module] = path
  graph = collections.defaultdict(set)
  for module, path in files.items():
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                   for a in node.names]
      else:
        continue
      for target in targets:
        if target != "lm" and not target.startswith("lm."):
          continue
        while target not in files and "." in target:
          target = target.rsplit(".", 1)[0]
        if target != module and target in files:
          graph[module].add(target)
    graph.setdefault(module, set())
  return dict(graph)


def cycles(graph: dict[str, set[str]]) -> set[frozenset]:
  """The strongly connected groups of more than one file (Tarjan's algorithm, iterative)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], set()
  for root in graph:
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
      v, children = work[-1]
      w = next(children, None)
      if w is not None:
        if w not in index:
          index[w] = low[w] = len(index)
          stack.append(w)
          on_stack.add(w)
          work.append((w, iter(sorted(graph[w]))))
        elif w in on_stack:
          low[v] = min(low[v], index[w])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[v])
      if low[v] == index[v]:
        group = set()
        while True:
          w = stack.pop()
          on_stack.discard(w)
          group.add(w)
          if w == v:
            break
        if len(group) > 1:
          out.add(frozenset(group))
  return out


GRAPH = import_graph(REPO)


def test_every_module_has_a_floor():
  assert [m for m in sorted(GRAPH) if floor(m) is None] == [], "add the package to FLOORS"


def test_no_import_runs_up_a_floor():
  upward = {(m, t) for m, targets in GRAPH.items() for t in targets
            if floor(m) is not None and floor(t) is not None and floor(t) > floor(m)}
  new = sorted(upward - PENDING_UPWARD)
  assert not new, f"imports that run up a floor (see this file's docstring): {new}"
  gone = sorted(PENDING_UPWARD - upward)
  assert not gone, f"no longer upward: delete them from PENDING_UPWARD: {gone}"


def test_no_import_circles():
  found = sorted(sorted(c) for c in cycles(GRAPH))
  assert not found, f"import circles between files: {found}"


def test_the_checks_see_upward_imports_and_circles():
  """The checks on a made-up graph: lazy, relative and `from lm import x` forms are edges."""
  graph = {"lm.models.a": {"lm.api"}, "lm.api": {"lm.models.a"}, "lm.cli.x": {"lm.api"}}
  assert cycles(graph) == {frozenset({"lm.models.a", "lm.api"})}
  assert floor("lm.models.a") < floor("lm.api") < floor("lm.cli.x")
  assert floor("lm") == floor("lm.evaluation") and floor("lm.model_dir") == 3
  # in this tree: lm.api imports lm.model_dir with `from lm.model_dir import ...`; the
  # compression CLI imports lm.compression inside its main (a lazy import)
  assert "lm.model_dir" in GRAPH["lm.api"]
  assert "lm.compression.quantize" in GRAPH["lm.cli.quantize"]
