"""Greedy decoding speed: lm's generate (KV cache, jitted loop) vs transformers' generate.

  python benchmarks/decode_throughput.py [--batches 1 32] [--prompt_len 128] [--new_tokens 128]
      [--models gpt2_124m smollm_135m]

Builds each model with random weights in transformers (fp32), saves it, imports it with
lm-convert (the same weights) and times, on this machine's CPU, both libraries generating
`new_tokens` greedy tokens after a random `prompt_len`-token prompt (no EOS, so every row
decodes every step). Prints new tokens/s (batch * new_tokens / wall time of the whole call,
prefill included), time to first token (a call with one new token) and the ratio lm / HF.
Each lm measurement follows an untimed call with the same shapes (compilation); HF's follow
an untimed one-token call.
"""
import argparse
import os
import tempfile
import time

import numpy as np

HF_CONFIGS = {  # the shapes of gin_configs/models/<name>.gin
    "gpt2_124m": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257,
                      n_positions=1024, activation_function="gelu_new"),
    "smollm_135m": dict(model_type="llama", hidden_size=576, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                        vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                        max_position_embeddings=8192, rms_norm_eps=1e-5),
}


def build(name: str, workdir: str):
  """(HF model, lm model) with the same random weights."""
  import torch
  import transformers
  import lm
  from lm.convert import hf_dirs
  fields = dict(HF_CONFIGS[name])
  config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
  torch.manual_seed(0)
  hf = transformers.AutoModelForCausalLM.from_config(config).eval()
  hf_dir, lm_dir = os.path.join(workdir, name + "_hf"), os.path.join(workdir, name + "_lm")
  hf.save_pretrained(hf_dir)
  hf_dirs.import_hf(hf_dir, lm_dir)
  model = lm.load(lm_dir)
  model.eos_ids = ()  # decode every step, as HF does with eos_token_id=None
  return hf, model


def timed(fn, repeats: int, warmup=None) -> float:
  (warmup or fn)()  # compilation (lm: same shapes), allocator
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def hf_generate(hf, prompts_BP, new_tokens: int):
  import torch
  ids = torch.tensor(prompts_BP)
  def run():
    with torch.no_grad():
      out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                        max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        eos_token_id=None, pad_token_id=0, use_cache=True)
    assert out.shape[1] == ids.shape[1] + new_tokens
    return out
  return run


def lm_generate(model, prompts_BP, new_tokens: int):
  prompts = prompts_BP.tolist()
  def run():
    out = model.generate(prompts, max_new_tokens=new_tokens)
    assert all(len(r) == new_tokens for r in out)
    return out
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="+", default=list(HF_CONFIGS))
  parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args()
  import jax
  import torch
  import transformers
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {len(jax.devices())} device), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, {os.cpu_count()} CPUs")
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    for name in args.models:
      hf, model = build(name, workdir)
      vocab = model.config.vocab_size
      for batch in args.batches:
        prompts_BP = np.random.default_rng(batch).integers(0, vocab, (batch, args.prompt_len))
        same = (np.asarray(lm_generate(model, prompts_BP[:1], 8)())
                == hf_generate(hf, prompts_BP[:1], 8)()[:, args.prompt_len:].numpy()).all()
        r = {"model": name, "batch": batch, "same_first_8": bool(same)}
        for lib, make in (("hf", hf_generate), ("lm", lm_generate)):
          obj = hf if lib == "hf" else model
          first = make(obj, prompts_BP, 1)
          r[f"{lib}_ttft_ms"] = 1000 * timed(first, args.repeats)
          # HF compiles nothing: a one-token call warms it up; lm compiles these shapes first.
          seconds = timed(make(obj, prompts_BP, args.new_tokens), args.repeats,
                          warmup=first if lib == "hf" else None)
          r[f"{lib}_tok_s"] = batch * args.new_tokens / seconds
        rows.append(r)
        print(_row(r), flush=True)
  print("\n| model | batch | HF tokens/s | lm tokens/s | lm / HF | HF TTFT ms | lm TTFT ms |"
        " greedy agrees |\n|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(_row(r))


def _row(r) -> str:
  return (f"| {r['model']} | {r['batch']} | {r['hf_tok_s']:.1f} | {r['lm_tok_s']:.1f} | "
          f"{r['lm_tok_s'] / r['hf_tok_s']:.2f}x | {r['hf_ttft_ms']:.0f} | "
          f"{r['lm_ttft_ms']:.0f} | {'yes' if r['same_first_8'] else 'no'} |")


if __name__ == "__main__":
  main()
