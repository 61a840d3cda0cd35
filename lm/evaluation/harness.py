"""An lm model as an lm-evaluation-harness `LM`: run any harness task on an lm checkpoint.

  import lm, lm_eval
  from lm.evaluation.harness import HarnessLM
  results = lm_eval.simple_evaluate(model=HarnessLM(lm.load("/tmp/run")), tasks=["arc_easy"])

Importing this module also registers the model type "lm" with the harness
(`--model lm --model_args model_dir=/tmp/run,batch_size=16` once the module is imported).
Needs `lm_eval` (the `test` extra installs it); nothing else in lm imports this module.

loglikelihood requests sharing a context are scored as one multiple-choice item (the context
runs once; `LoadedModel.score_choices`), with the semantics of `LoadedModel.score`, which are the
harness's. loglikelihood_rolling is `LoadedModel.score_rolling` (disjoint windows);
generate_until is greedy `LoadedModel.generate` with the request's `until` strings, the
context cut on the left to leave max_gen_toks positions (as the harness's HF model).
"""
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs

from lm.decoding.stops import cut_at_stop
from lm.errors import UserError


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
    for (_, ks), (lls, greedy) in zip(groups, self.model.score_choices(items, self.batch_size)):
      for k, ll, g in zip(ks, lls, greedy):
        out[k] = (float(ll), bool(g))
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    """Total log-likelihood of each request's whole text."""
    return [float(x) for x in self.model.score_rolling([r.args[0] for r in requests])]

  def generate_until(self, requests, disable_tqdm: bool = False):
    """Greedy continuations, cut at the first of the request's `until` strings.

    As the harness's HF model: the context is encoded as `generate` encodes a text prompt
    (the tokenizer's special tokens, none added when the text already starts with the BOS
    token) and cut on the left to max_len - max_gen_toks tokens, so prompt and answer fit."""
    out = []
    for request in requests:
      context, gen_kwargs = request.args
      kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
      until, max_new = [u for u in kwargs["until"] if u], kwargs["max_gen_toks"]
      keep = self.model.config.max_len - max_new
      if keep < 1:
        raise UserError(f"max_gen_toks {max_new} leaves no room for a prompt in the model's "
                        f"{self.model.config.max_len} positions")
      ids = self._context_ids(context)[-keep:]
      new = self.model.generate([ids], max_new_tokens=max_new, temperature=0.0,
                                stop=until or None)[0]
      out.append(cut_at_stop(self.model.tokenizer.decode(new), until))
    return out

  def _context_ids(self, context: str) -> list[int]:
    bos = self.model.tokenizer.special_tokens().get("bos_token")
    if bos and context.startswith(bos):  # the harness's has_bos_prefix: no second BOS
      return self.model.encode(context)
    return self.model.encode_prompt(context)
