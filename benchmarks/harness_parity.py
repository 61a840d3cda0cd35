"""lm-eval beside lm-evaluation-harness (`--model hf`) on the same weights and the same prompts.

  python benchmarks/harness_parity.py --model_dir M [--tasks piqa,boolq,copa,winogrande,lambada_openai]
      [--limit 50] [--batch_size 16] [--data_dir ../shared/evaldata]

Exports M with `lm-convert export-hf`, renders the first --limit documents of each task exactly
as lm-eval prompts them (lm.evaluation's own loaders) into JSON lines, writes a local harness
YAML per task over that file (multiple choice: `{{query}}` + " " + choice; Winogrande: the
harness's partial scoring, one context per option; LAMBADA: a loglikelihood task with
perplexity and acc), runs `lm-eval` and `python -m lm_eval --model hf` on them and prints one
row per metric with both values. The prompts themselves follow the harness's task definitions
(docs/evaluation.md); this compares the two scorers on identical requests.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Field names: the harness reads doc[name]; an int doc_to_text means one context per choice.
MC_TEMPLATE = "doc_to_text: query\ndoc_to_choice: choices\ndoc_to_target: gold\n" \
              "output_type: multiple_choice\n"
TEMPLATES = {
    "winogrande": "doc_to_text: gold\ndoc_to_choice: contexts\ndoc_to_target: continuation\n"
                  "output_type: multiple_choice\n",
    # A loglikelihood task's target gets no delimiter: the space is the target's own.
    "lambada_openai": "doc_to_text: context\ndoc_to_target: \"{{' ' + continuation}}\"\n"
                      "output_type: loglikelihood\n",
}
METRICS = {"lambada_openai": ("perplexity", "acc"), "piqa": ("acc", "acc_norm"),
           "arc_easy": ("acc", "acc_norm"), "arc_challenge": ("acc", "acc_norm")}


def records(task: str, data_dir: str, limit: int) -> list[dict]:
  """The task's first `limit` documents as lm-eval renders them (0-shot)."""
  from lm.evaluation import multiple_choice
  if task == "lambada_openai":
    rows = multiple_choice.read_jsonl(os.path.join(data_dir, "lambada", "lambada_openai.jsonl"))
    return [{"context": r["context"], "continuation": r["continuation"]} for r in rows[:limit]]
  docs = multiple_choice.load_docs(task, data_dir)[:limit]
  if task == "winogrande":
    return [{"contexts": d.contexts, "continuation": d.continuation, "gold": d.gold}
            for d in docs]
  return [{"query": d.query, "choices": d.choices, "gold": d.gold} for d in docs]


def write_task(work: str, task: str, rows: list[dict]) -> str:
  name = f"{task}_parity"
  data = os.path.join(work, f"{name}.jsonl")
  with open(data, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  metrics = METRICS.get(task, ("acc",))
  aggregation = {"perplexity": "    aggregation: perplexity\n    higher_is_better: false\n"}
  with open(os.path.join(work, f"{name}.yaml"), "w") as f:
    f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {data}\ntest_split: test\n" + TEMPLATES.get(task, MC_TEMPLATE)
            + "metric_list:\n" + "".join(f"  - metric: {m}\n" + aggregation.get(m, "")
                                         for m in metrics))
  return name


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--tasks", default="piqa,boolq,copa,winogrande,lambada_openai")
  parser.add_argument("--limit", type=int, default=50)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "evaldata"))
  args = parser.parse_args()
  tasks = args.tasks.split(",")
  work = tempfile.mkdtemp(prefix="harness_parity_")
  hf_dir = os.path.join(work, "hf")
  subprocess.run([sys.executable, "-m", "lm.cli.convert", "export-hf",
                  f"--model_dir={args.model_dir}", f"--hf_dir={hf_dir}"], check=True)
  names = {t: write_task(work, t, records(t, args.data_dir, args.limit)) for t in tasks}
  import lm
  ours = lm.evaluate(lm.load(args.model_dir), tasks, limit=args.limit,
                     batch_size=args.batch_size, data_dir=args.data_dir)["results"]
  out = os.path.join(work, "harness_out")
  env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
             HF_DATASETS_CACHE=os.path.join(work, "hf_datasets"))
  subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                  f"pretrained={hf_dir},dtype=float32", "--device", "cpu", "--tasks",
                  ",".join(names.values()), "--include_path", work, "--batch_size",
                  str(args.batch_size), "--output_path", out], check=True, env=env)
  results_file = next(os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs
                      if f.startswith("results"))
  with open(results_file) as f:
    theirs = json.load(f)["results"]
  print(f"\n{args.model_dir}, first {args.limit} documents, 0-shot")
  print("| task | metric | lm-eval | harness 0.4 `--model hf` |\n|---|---|---|---|")
  for task in tasks:
    for metric in METRICS.get(task, ("acc",)):
      print(f"| {task} | {metric} | {ours[task][metric]:.4f} | "
            f"{theirs[names[task]][metric + ',none']:.4f} |")


if __name__ == "__main__":
  main()
