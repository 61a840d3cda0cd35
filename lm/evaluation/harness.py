"""An lm model as an lm-evaluation-harness `LM`: run any harness task on an lm checkpoint.

  import lm, lm_eval
  from lm.evaluation.harness import HarnessLM
  results = lm_eval.simple_evaluate(model=HarnessLM(lm.load("/tmp/run")), tasks=["arc_easy"])

Importing this module also registers the model type "lm" with the harness
(`--model lm --model_args model_dir=/tmp/run,batch_size=16` once the module is imported).
Needs `lm_eval` (the `test` extra installs it); nothing else in lm imports this module.

loglikelihood requests sharing a context are scored as one multiple-choice item (the context
runs once; lm.evaluation.scoring), with the semantics of `LoadedModel.score`, which are the
harness's. loglikelihood_rolling is `LoadedModel.score_rolling` (disjoint windows);
generate_until is greedy `LoadedModel.generate` with the request's `until` strings.
"""
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lm.evaluation.scoring import score_items


@register_model("lm")
class HarnessLM(LM):
  """lm_eval.api.model.LM over an lm.api.LoadedModel (or a model directory)."""

  def __init__(self, model=None, model_dir: str | None = None, step: int | None = None,
               batch_size: int = 16, max_gen_toks: int = 256, **_):
    super().__init__()
    if model is None:
      import lm
      model = lm.load(model_dir, None if step is None else int(step))
    self.model, self.batch_size, self.max_gen_toks = model, int(batch_size), int(max_gen_toks)

  def loglikelihood(self, requests, disable_tqdm: bool = False):
    """[(log p(continuation | context), is_greedy)] per request, in request order."""
    by_context: dict[str, list[int]] = {}
    for k, request in enumerate(requests):
      by_context.setdefault(request.args[0], []).append(k)
    groups = list(by_context.items())
    items = [[(context, requests[k].args[1]) for k in ks] for context, ks in groups]
    out = [None] * len(requests)
    for (_, ks), (lls, greedy) in zip(groups, score_items(self.model, items, self.batch_size)):
      for k, ll, g in zip(ks, lls, greedy):
        out[k] = (float(ll), bool(g))
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    """Total log-likelihood of each request's whole text."""
    return [float(x) for x in self.model.score_rolling([r.args[0] for r in requests])]

  def generate_until(self, requests, disable_tqdm: bool = False):
    """Greedy continuations, cut at the first of the request's `until` strings."""
    out = []
    for request in requests:
      context, gen_kwargs = request.args
      until = gen_kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
      out.append(self.model.generate([context], max_new_tokens=max_new, temperature=0.0,
                                     stop=until or None)[0])
    return out
