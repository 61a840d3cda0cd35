"""lm-sample: generate text from a model directory (an lm-train run or an lm-convert import).

  lm-sample --model_dir=/tmp/lm/shakespeare --prompt="ROMEO:" --max_new_tokens=300
  lm-sample --model_dir=/tmp/smollm2 --chat --prompt="What is 2+2?" --temperature=0
  lm-sample --model_dir=DIR --prompt_file=prompts.jsonl --output=out.jsonl

One prompt is streamed to the terminal as it is decoded. --prompt_file reads JSONL records
{"prompt": "..."} (or plain JSON strings) and writes one {"prompt", "output"} record per line
(`outputs`, a list, with --num_samples > 1; `beams`, [[text, score], ...], with --num_beams > 1).
Imports no TensorFlow: text goes through the tokenizer saved in the model directory.
"""
import argparse
import json
import os
import sys

from lm.cli.common import run_main
from lm.errors import UserError
from lm.jsonl import read_jsonl


def _parser():
  parser = argparse.ArgumentParser(prog="lm-sample", description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  parser.add_argument("--prompt", default="\n")
  parser.add_argument("--prompt_file", help="JSONL of prompts: decode them as one batch")
  parser.add_argument("--output", help="JSONL output of --prompt_file (default: stdout)")
  parser.add_argument("--chat", action="store_true",
                      help="wrap each prompt as a user message in the tokenizer's chat template")
  parser.add_argument("--max_new_tokens", "--num_tokens", type=int,
                      help="default: 300, or what a learned-position model's max_len leaves")
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top_k", type=int, help="0 or unset: no top-k filter")
  parser.add_argument("--top_p", type=float, help="in [0, 1]; 1 or unset: no top-p filter")
  parser.add_argument("--min_p", type=float, help="in [0, 1]; 0 or unset: no min-p filter")
  parser.add_argument("--num_samples", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_beams", type=int, default=1, help="> 1: beam search (n-best)")
  parser.add_argument("--length_penalty", type=float, default=0.6, help="beam search alpha")
  parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
  parser.add_argument("--mesh_shape", type=lambda s: tuple(int(x) for x in s.split(",")),
                      help="data,fsdp,tensor (default: one device)")
  return parser


def _read_prompts(path: str) -> list[str]:
  prompts = []
  for n, record in read_jsonl(path, missing=f"prompt file not found: {path}"):
    prompt = record.get("prompt") if isinstance(record, dict) else record
    if not isinstance(prompt, str):
      raise UserError(f"{path}:{n}: expected {{\"prompt\": \"...\"}} or a JSON string")
    prompts.append(prompt)
  if not prompts:
    raise UserError(f"{path} holds no prompts")
  return prompts


def _main(argv):
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  if not os.path.exists(os.path.join(args.model_dir, "model.json")):
    raise UserError(f"{args.model_dir} is not an lm model directory (no model.json)")
  prompts = _read_prompts(args.prompt_file) if args.prompt_file else [args.prompt]
  import lm  # after the cheap checks: loading JAX takes seconds
  model = lm.load(args.model_dir, args.step, args.mesh_shape)
  if model.tokenizer is None:
    raise UserError(f"{args.model_dir} has no tokenizer (tokenizer/): lm-sample needs one "
                    "to read prompts; use lm.load(...).generate with token ids instead")
  texts = [[{"role": "user", "content": p}] if args.chat else p for p in prompts]
  if args.max_new_tokens is None:
    args.max_new_tokens = 300
    if model.config.positions == "learned":  # no position past max_len: stop there
      longest = max(len(model.tokenizer.encode(p)) for p in prompts)
      args.max_new_tokens = max(1, min(300, model.config.max_len - longest))
  sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                  num_samples=args.num_samples, stop=args.stop or None, seed=args.seed)
  if args.prompt_file:
    _write_batch(model, args, prompts, texts, sampling)
  elif args.num_beams > 1:
    for text, score in model.beam_search(texts, args.max_new_tokens, args.num_beams,
                                         args.length_penalty)[0]:
      print(f"[{score:.4f}] {prompts[0] if not args.chat else ''}{text}")
      print("-" * 60)
  elif args.num_samples > 1:
    for text in model.generate(texts, **sampling)[0]:
      print(("" if args.chat else prompts[0]) + text)
      print("-" * 60)
  else:
    _stream(model, texts, sampling, "" if args.chat else prompts[0])


def _stream(model, texts, sampling, shown_prompt: str):
  """Prints the prompt, then each chunk of text as its decode steps finish."""
  sys.stdout.write(shown_prompt)
  sys.stdout.flush()
  # Held back until the end: a possible start of a stop string, and a trailing replacement
  # character (a chunk may end inside a multi-byte character).
  hold = max(map(len, sampling["stop"] or [""]), default=0)
  printed = text = ""
  for outs in model.stream(texts, chunk_steps=8, **sampling):
    text = outs[0]
    ready = text[:max(len(text) - hold, 0)].rstrip("\ufffd")
    if ready.startswith(printed) and len(ready) > len(printed):
      sys.stdout.write(ready[len(printed):])
      sys.stdout.flush()
      printed = ready
  sys.stdout.write(text[len(printed):] + "\n")
  sys.stdout.flush()


def _write_batch(model, args, prompts, texts, sampling):
  if args.num_beams > 1:
    results = model.beam_search(texts, args.max_new_tokens, args.num_beams, args.length_penalty)
    records = [{"prompt": p, "beams": [[t, s] for t, s in r]} for p, r in zip(prompts, results)]
  else:
    results = model.generate(texts, **sampling)
    key = "outputs" if args.num_samples > 1 else "output"
    records = [{"prompt": p, key: r} for p, r in zip(prompts, results)]
  lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      f.write(lines)
  else:
    sys.stdout.write(lines)


def main(argv=None):
  raise SystemExit(run_main(_main, argv))


if __name__ == "__main__":
  main()
