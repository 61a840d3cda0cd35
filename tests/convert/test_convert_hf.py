"""HF interop: import / export of GPT-2 and Llama checkpoints proven by logits parity (offline).

Random-weight transformers models are built from small configs, saved as safetensors,
imported, and their logits compared with lm's (max abs diff <= 1e-4 in float32).
"""
import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from lm.api import load  # noqa: E402
from lm.cli import convert  # noqa: E402
from lm.convert import hf_dirs  # noqa: E402
from lm.errors import UserError  # noqa: E402
from lm.models.transformer import Transformer  # noqa: E402
from lm.sharding import DEFAULT_RULES, make_mesh, param_shardings, use_mesh  # noqa: E402
from lm.training import loop  # noqa: E402
from lm.training.optimizers import OptimizerConfig  # noqa: E402
from lm import tokenizers  # noqa: E402
from lm import model_dir  # noqa: E402
from test_tokenizers import CHAT, TEXTS, hf_tokenizer  # noqa: E402

VOCAB, TOL = 96, 1e-4
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 24))
HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB,
                                            n_positions=32, bos_token_id=0, eos_token_id=0),
    "llama_gqa": lambda: transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=VOCAB, tie_word_embeddings=False),
    "llama31_rope_scaling": lambda: transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=128, vocab_size=VOCAB, tie_word_embeddings=True,
        rope_theta=500000.0, max_position_embeddings=256,
        # original_max_position_embeddings=16 puts the test's frequencies in all three bands.
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}


def _hf_logits(model) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(TOKENS)).logits.numpy()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
  """{name: (saved dir, reference logits)}; weights are scaled up from HF's 0.02-std init so
  that the logits differ by O(1) between tokens and a wrong mapping cannot hide."""
  torch.manual_seed(0)
  out = {}
  for name, make_config in HF_CONFIGS.items():
    model = transformers.AutoModelForCausalLM.from_config(make_config()).eval()
    for pname, p in model.named_parameters():
      is_scale = p.ndim == 1 and "bias" not in pname
      p.data.normal_(1.0 if is_scale else 0.0, 0.1 if is_scale else 0.15)
    path = str(tmp_path_factory.mktemp(name))
    # The GQA model is written as a sharded checkpoint (model.safetensors.index.json).
    model.save_pretrained(path, max_shard_size="100KB" if name == "llama_gqa" else "1GB")
    out[name] = (path, _hf_logits(model))
  return out


def _convert(*argv) -> int:
  with pytest.raises(SystemExit) as exit_info:
    convert.main(list(argv))
  return exit_info.value.code


@pytest.fixture(scope="module")
def imported(hf_models, tmp_path_factory):
  """{name: lm model dir} imported with lm-convert import-hf."""
  out = {}
  for name, (hf_dir, _) in hf_models.items():
    model_dir = str(tmp_path_factory.mktemp(name + "_lm"))
    with pytest.raises(SystemExit) as exit_info:
      convert.main(["import-hf", "--hf_dir", hf_dir, "--model_dir", model_dir])
    assert exit_info.value.code == 0
    out[name] = model_dir
  return out


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_import_matches_hf_logits(name, hf_models, imported):
  _, reference = hf_models[name]
  assert np.abs(reference).max() > 1.0
  diff = np.abs(np.asarray(load(imported[name]).logits(TOKENS)) - reference).max()
  print(f"{name}: import max abs diff {diff:.2e}")
  assert diff <= TOL


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_export_loads_in_transformers(name, hf_models, imported, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    convert.main(["export-hf", "--model_dir", imported[name], "--hf_dir", str(tmp_path)])
  assert exit_info.value.code == 0
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  diff = np.abs(_hf_logits(model) - hf_models[name][1]).max()
  print(f"{name}: export max abs diff {diff:.2e}")
  assert diff <= TOL


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_import_onto_a_sharded_mesh(name, hf_models):
  """Weights placed by their logical axes on a mesh of 8 devices (data, fsdp, tensor)."""
  cfg, params = hf_dirs.read_hf(hf_models[name][0])
  model = Transformer(cfg)
  mesh = make_mesh((2, 2, 2) if cfg.kv_heads % 2 == 0 else (2, 4, 1))  # MQA: no tensor axis
  with use_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    _, shardings = param_shardings(model, mesh, TOKENS.shape[1])
    sharded = jax.device_put(params, shardings)
    logits = jax.jit(lambda p, t: model.apply({"params": p}, t))(sharded, TOKENS)
  assert sharded["embed"]["embedding"].sharding.spec == shardings["embed"]["embedding"].spec
  assert len(sharded["embed"]["embedding"].sharding.device_set) == 8
  diff = np.abs(np.asarray(logits) - hf_models[name][1]).max()
  print(f"{name}: sharded import max abs diff {diff:.2e}")
  assert diff <= TOL


def test_scan_layers_round_trip(hf_models, tmp_path):
  hf_dir, reference = hf_models["llama_gqa"]
  cfg = hf_dirs.import_hf(hf_dir, str(tmp_path / "lm"), scan_layers=True)
  assert cfg.scan_layers
  assert np.abs(np.asarray(load(str(tmp_path / "lm")).logits(TOKENS)) - reference).max() <= TOL
  hf_dirs.export_hf(str(tmp_path / "lm"), str(tmp_path / "hf"))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  assert np.abs(_hf_logits(model) - reference).max() <= TOL


def test_pickle_checkpoints_are_refused(hf_models, tmp_path):
  with open(os.path.join(hf_models["gpt2"][0], "config.json")) as f:
    (tmp_path / "config.json").write_text(f.read())
  (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(UserError, match="pickle"):
    hf_dirs.import_hf(str(tmp_path), str(tmp_path / "out"))


def test_unsupported_architectures_are_refused(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
  with pytest.raises(UserError, match="unsupported model_type"):
    hf_dirs.import_hf(str(tmp_path), str(tmp_path / "out"))


class _Batches:
  """A loop-compatible iterator of fixed random batches (no TF needed)."""

  def __init__(self, input_cfg, split):
    self.state, self._cfg = 0, input_cfg

  def __iter__(self):
    return self

  def __next__(self):
    self.state += 1
    rng = np.random.default_rng(self.state)
    seq = rng.integers(0, VOCAB, (self._cfg.batch_size, self._cfg.seq_len + 1), np.int32)
    return {"inputs": seq[:, :-1], "targets": seq[:, 1:],
            "weights": np.ones(seq[:, 1:].shape, np.float32)}

  def restore(self, state):
    self.state = state


@dataclasses.dataclass
class _InputConfig:
  batch_size: int = 8
  seq_len: int = 16


@pytest.mark.slow
def test_fine_tuning_starts_from_the_imported_params(imported, tmp_path):
  """lm-train's init_from: with a zero learning rate the run ends on the imported weights."""
  source = load(imported["llama_gqa"])
  result = loop.train(str(tmp_path / "ft"), model_cfg=source.config, input_cfg=_InputConfig(),
                      batches_fn=_Batches, optimizer_cfg=OptimizerConfig(learning_rate=0.0),
                      steps=1, eval_steps=1, progress=False, init_from=imported["llama_gqa"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params),
               jax.device_get(source.params))


def test_relative_paths(hf_models, tmp_path, monkeypatch):
  """Issue 8.1: --hf_dir / --model_dir relative to the working directory."""
  hf_dir, reference = hf_models["llama_gqa"]
  monkeypatch.chdir(tmp_path)
  shutil.copytree(hf_dir, "hf")
  assert _convert("import-hf", "--hf_dir", "hf", "--model_dir", "runs/lm") == 0
  assert _convert("export-hf", "--model_dir", "runs/lm", "--hf_dir", "runs/hf") == 0
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "runs/hf")).eval()
  assert np.abs(_hf_logits(model) - reference).max() <= TOL


def test_failed_import_leaves_nothing(hf_models, tmp_path, monkeypatch):
  """Issue 8.1: an import that fails while writing leaves no half-made directory."""
  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(model_dir, "save_params", fail)
  with pytest.raises(OSError, match="disk full"):
    hf_dirs.import_hf(hf_models["gpt2"][0], str(tmp_path / "new" / "lm"))
  assert os.listdir(tmp_path) == []


def test_non_empty_target_needs_overwrite(hf_models, tmp_path):
  """Issue 8.7: a second import into the same directory is refused, or replaces it whole."""
  target = str(tmp_path / "lm")
  assert _convert("import-hf", "--hf_dir", hf_models["gpt2"][0], "--model_dir", target) == 0
  llama_dir, llama_logits = hf_models["llama_gqa"]
  assert _convert("import-hf", "--hf_dir", llama_dir, "--model_dir", target) == 2
  assert load(target).config.positions == "learned"  # still the GPT-2 import
  assert _convert("import-hf", "--hf_dir", llama_dir, "--model_dir", target, "--overwrite") == 0
  assert np.abs(np.asarray(load(target).logits(TOKENS)) - llama_logits).max() <= TOL


def test_special_ids_and_generation_config_round_trip(tmp_path):
  """Issue 8.15: bos/eos/pad ids and generation_config.json survive import and export."""
  config = HF_CONFIGS["llama_gqa"]()
  config.update(dict(bos_token_id=3, eos_token_id=[4, 5], pad_token_id=6))
  model = transformers.AutoModelForCausalLM.from_config(config)
  model.generation_config.update(bos_token_id=3, eos_token_id=[4, 5], pad_token_id=6,
                                 max_new_tokens=17)
  model.save_pretrained(str(tmp_path / "hf"))
  assert _convert("import-hf", "--hf_dir", str(tmp_path / "hf"), "--model_dir",
                  str(tmp_path / "lm")) == 0
  assert _convert("export-hf", "--model_dir", str(tmp_path / "lm"), "--hf_dir",
                  str(tmp_path / "out")) == 0
  exported = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
  assert (exported.bos_token_id, exported.eos_token_id, exported.pad_token_id) == (3, [4, 5], 6)
  generation = transformers.GenerationConfig.from_pretrained(str(tmp_path / "out"))
  assert (generation.eos_token_id, generation.max_new_tokens) == ([4, 5], 17)


def test_tokenizer_round_trip(hf_models, tmp_path):
  """import-hf copies the HF tokenizer (lm.tokenizers reads it: same ids as transformers);
  export-hf writes it back so AutoTokenizer loads the exported directory."""
  reference = hf_tokenizer()
  shutil.copytree(hf_models["llama_gqa"][0], tmp_path / "hf")
  reference.save_pretrained(str(tmp_path / "hf"))
  hf_dirs.import_hf(str(tmp_path / "hf"), str(tmp_path / "lm"))
  hf_dirs.export_hf(str(tmp_path / "lm"), str(tmp_path / "out"))
  ours = tokenizers.load_tokenizer(str(tmp_path / "lm"))
  exported = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  for text in TEXTS:
    assert ours.encode(text) == exported.encode(text) == reference.encode(text), text
  assert ours.apply_chat_template(CHAT) == exported.apply_chat_template(
      CHAT, tokenize=False, add_generation_prompt=True)


def test_padded_vocabulary_round_trip(hf_models, tmp_path):
  """Rows padded by vocab_pad_multiple are zeros after import and dropped by export."""
  hf_dir, reference = hf_models["llama_gqa"]
  cfg = hf_dirs.import_hf(hf_dir, str(tmp_path / "lm"), vocab_pad_multiple=64)
  assert (cfg.vocab_size, cfg.padded_vocab_size) == (VOCAB, 128)
  model = load(str(tmp_path / "lm"))
  assert model.params["embed"]["embedding"].shape == (128, 64)
  assert np.abs(np.asarray(model.logits(TOKENS)) - reference).max() <= TOL
  hf_dirs.export_hf(str(tmp_path / "lm"), str(tmp_path / "hf"))
  exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  assert exported.config.vocab_size == VOCAB
  assert np.abs(_hf_logits(exported) - reference).max() <= TOL
