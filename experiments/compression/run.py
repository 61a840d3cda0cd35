"""What compression costs: bytes, validation loss and decode speed of quantized and pruned models.

  python experiments/compression/run.py --work_dir /tmp/compression [--models char spm smollm2]

For each model: fp32, bf16 (weights and compute), lm-quantize int8, int4 g128 and int4 g128
with GPTQ (calibrated like Wanda), lm-prune
magnitude 50 % unstructured, 2:4 magnitude and 2:4 Wanda, and (Shakespeare models) each pruned
variant after a recovery fine-tune of 10 % of the original 2,000 steps with lm-train init_from.
Prints one markdown table per model and writes results.json to --work_dir.

  char     the Shakespeare char model (gin_configs/runs/shakespeare_char_cpu.gin, trained here
           if --work_dir/char has no checkpoint); validation: the first --val_chars characters
           of the validation split (the corpus' last 10 %), scored in windows of 64 with 32
           tokens of context; Wanda and GPTQ calibrate on 64 windows of the train split.
  spm      the same recipe on tiny_shakespeare_spm (SentencePiece, 1024 pieces), same texts.
  smollm2  SmolLM2-135M-Instruct imported from the Q4_1 GGUF in ../shared/models (real
           weights); validation: the first --val_docs LAMBADA passages (context + answer,
           ../shared/evaldata), calibration: 64 windows of 128 tokens from passages 1000-1499.
           No recovery fine-tune (too slow for a shared 2-core CPU).
Decode speed: greedy, prompt of 8 tokens, --new_tokens new tokens (Shakespeare models: 3x)
without early EOS, batch 1 and 32, the best of --repeats calls after one that compiles, one JAX
CPU device.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
GGUF = os.path.join(SHARED, "models", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
LAMBADA = os.path.join(SHARED, "evaldata", "lambada", "lambada_openai.jsonl")
CHAR_RUN = os.path.join(REPO, "gin_configs", "runs", "shakespeare_char_cpu.gin")
CHAR_STEPS = 2000
# The SentencePiece model: the char recipe on tiny_shakespeare_spm (1024 pieces).
BINDINGS = {"char": [], "spm": ["--gin.TASK='tiny_shakespeare_spm'",
                                "--gin.ModelConfig.vocab_size=1024"]}

PRUNED = {"magnitude 50% unstructured": dict(sparsity=0.5, pattern="unstructured",
                                             method="magnitude"),
          "2:4 magnitude": dict(sparsity=0.5, pattern="2:4", method="magnitude"),
          "2:4 Wanda": dict(sparsity=0.5, pattern="2:4", method="wanda")}


def sh(*args):
  print("+", " ".join(args), flush=True)
  subprocess.run(args, check=True, cwd=REPO)


def bin_path(name):
  return os.path.join(os.path.dirname(sys.executable), name)


def slug(name: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in name)


def write_jsonl(path, texts):
  with open(path, "w") as f:
    for t in texts:
      f.write(json.dumps({"text": t}) + "\n")


def prepare_shakespeare(work, key, val_chars):
  """(model dir, validation texts, calibration source) of the Shakespeare char or SPM model."""
  model_dir = os.path.join(work, key)
  if not os.path.isdir(os.path.join(model_dir, "checkpoints", str(CHAR_STEPS))):
    sh(bin_path("lm-train"), f"--gin_file={CHAR_RUN}", f"--model_dir={model_dir}",
       "--gin.sample_after_training.num_tokens=50", *BINDINGS[key])
  text = open(os.path.join(REPO, "lm", "data", "assets", "tinyshakespeare.txt")).read()
  cut = int(len(text) * 0.9)
  calib = os.path.join(work, "char_calibration.txt")
  with open(calib, "w") as f:
    f.write(text[:cut])
  return model_dir, [text[cut:cut + val_chars]], f"ppl:{calib}"


def prepare_smollm2(work, val_docs):
  model_dir = os.path.join(work, "smollm2")
  if not os.path.isdir(os.path.join(model_dir, "checkpoints")):
    sh(bin_path("lm-convert"), "import-gguf", f"--gguf={GGUF}", f"--model_dir={model_dir}")
  with open(LAMBADA) as f:
    docs = [json.loads(line) for line in f]
  texts = [d["context"] + " " + d["continuation"] for d in docs]
  calib = os.path.join(work, "smollm2_calibration.jsonl")
  write_jsonl(calib, texts[1000:1500])
  return model_dir, texts[:val_docs], f"ppl:{calib}"


def val_loss(model, texts, context_len):
  """Mean negative log-likelihood per token of the validation texts."""
  ids = [model.encode(t) for t in texts]
  lls = model.score_rolling(ids, context_len=context_len)
  return float(-np.sum(lls) / sum(len(i) for i in ids))


def decode_tps(model, batch, new_tokens, repeats):
  """Greedy decode tokens/s, the best of `repeats` calls after a compiling one (no EOS, so
  every row runs all steps)."""
  model.eos_ids = ()
  prompts = [[(7 * i + 3) % model.config.vocab_size for i in range(8)]] * batch
  model.generate(prompts, max_new_tokens=new_tokens)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    model.generate(prompts, max_new_tokens=new_tokens)
    best = min(best, time.perf_counter() - start)
  return batch * new_tokens / best


def bf16(model):
  from lm.api import LoadedModel
  cfg = dataclasses.replace(model.config, dtype="bfloat16", param_dtype="bfloat16")
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.params)
  return LoadedModel(config=cfg, params=params, task=model.task, tokenizer=model.tokenizer)


def recover(work, key, name, pruned_dir, steps):
  """lm-train from the pruned dir for `steps` steps of the model's recipe (masks kept)."""
  out = os.path.join(work, f"{key}_recovered_" + slug(name))
  if not os.path.isdir(os.path.join(out, "checkpoints", str(steps))):
    sh(bin_path("lm-train"), f"--gin_file={CHAR_RUN}", f"--model_dir={out}",
       f"--gin.train.init_from='{pruned_dir}'", f"--gin.TRAIN_STEPS={steps}",
       "--gin.LEARNING_RATE=3e-4", "--gin.OptimizerConfig.warmup_steps=10",
       "--gin.OptimizerConfig.end_learning_rate=3e-5", f"--gin.CHECKPOINT_EVERY={steps}",
       f"--gin.EVAL_EVERY={steps}", "--gin.sample_after_training.num_tokens=50", *BINDINGS[key])
  return out


def run_model(key, work, args):
  import lm
  from lm.compression import prune, quantize
  if key in BINDINGS:
    model_dir, texts, calib = prepare_shakespeare(work, key, args.val_chars)
    context_len, calib_len, new_tokens = 32, 64, 3 * args.new_tokens  # 8 + 48 <= max_len
  else:
    model_dir, texts, calib = prepare_smollm2(work, args.val_docs)
    context_len, calib_len, new_tokens = 1, 128, args.new_tokens
  variants = []  # (name, a function returning the LoadedModel)
  variants.append(("fp32", lambda: lm.load(model_dir)))
  variants.append(("bf16", lambda: bf16(lm.load(model_dir))))
  for name, scheme, method in (("int8", "int8", "rtn"), ("int4 g128", "int4", "rtn"),
                               ("int4 g128 GPTQ", "int4", "gptq")):
    out = os.path.join(work, f"{key}_{scheme}" + ("_gptq" if method == "gptq" else ""))
    if not os.path.isdir(out):
      quantize.quantize_dir(model_dir, out, scheme, group_size=128, method=method,
                            calibration_task=calib, calibration_rows=64,
                            calibration_len=calib_len)
    variants.append((name, lambda out=out: lm.load(out)))
  for name, spec in PRUNED.items():
    out = os.path.join(work, f"{key}_{slug(name)}")
    if not os.path.isdir(out):
      prune.prune_dir(model_dir, out, **spec, calibration_task=calib,
                      calibration_rows=64, calibration_len=calib_len)
    variants.append((name, lambda out=out: lm.load(out)))
    if key in BINDINGS:
      rec = recover(work, key, name, out, CHAR_STEPS // 10)
      variants.append((name + " + recovery", lambda rec=rec: lm.load(rec)))
  rows = []
  for name, make in variants:
    model = make()
    t0 = time.perf_counter()
    loss = val_loss(model, texts, context_len)
    t1 = time.perf_counter()
    tps = [decode_tps(model, b, new_tokens, args.repeats) for b in (1, 32)]
    rows.append(dict(variant=name, bytes=quantize.param_bytes(model.params), loss=loss,
                     tps_b1=tps[0], tps_b32=tps[1], eval_s=t1 - t0))
    print(json.dumps(rows[-1]), flush=True)
    del model
  base = rows[0]
  for r in rows:
    r["bytes_ratio"] = r["bytes"] / base["bytes"]
    r["rel_change"] = r["loss"] / base["loss"] - 1
  return rows


def table(key, rows) -> str:
  lines = [f"\n{key}:\n", "| variant | parameter bytes | val loss (ppl) | relative change | "
           "decode tokens/s batch 1 / 32 |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['variant']} | {r['bytes']:,} ({r['bytes_ratio']:.3f}x) | "
                 f"{r['loss']:.4f} ({np.exp(r['loss']):.2f}) | {100 * r['rel_change']:+.2f} % | "
                 f"{r['tps_b1']:.1f} / {r['tps_b32']:.1f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default="/tmp/compression")
  parser.add_argument("--models", nargs="+", default=["char", "spm", "smollm2"],
                      choices=["char", "spm", "smollm2"])
  parser.add_argument("--val_chars", type=int, default=20000)
  parser.add_argument("--val_docs", type=int, default=40)
  parser.add_argument("--new_tokens", type=int, default=16, help="(Shakespeare models: 3x as many)")
  parser.add_argument("--repeats", type=int, default=3, help="timed decode calls (best kept)")
  args = parser.parse_args()
  os.makedirs(args.work_dir, exist_ok=True)
  results = {}
  for key in args.models:
    results[key] = run_model(key, os.path.abspath(args.work_dir), args)
    with open(os.path.join(args.work_dir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
  for key, rows in results.items():
    print(table(key, rows))


if __name__ == "__main__":
  main()
