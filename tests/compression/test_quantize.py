"""lm-quantize / lm.compression.quantize: error bounds by hand, int4 packing, quantized
directories that lm.load decodes and scores exactly as their dequantized float weights."""
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lm
from lm.api import LoadedModel
from lm.cli import quantize as quantize_cli
from lm.compression import quantize
from lm.models import quantized
from lm.models.kernels import find_kernels, get_path
from lm.models.config import ModelConfig
from lm.models.transformer import Transformer
from helpers import snapshot

PROMPTS = ["ROMEO:", "Th", "KING HENRY"]


def test_int8_scale_and_values_by_hand():
  w = np.array([[1.27, 0.2], [-0.5, -0.4], [0.004, 0.1]], np.float32)  # [I=3, O=2]
  out = quantized.quantize_2d(jnp.asarray(w), bits=8, group=3)
  np.testing.assert_allclose(out["scale"], [[0.01, 0.4 / 127]], rtol=1e-6)
  np.testing.assert_array_equal(out["q"], [[127, 64], [-50, -127], [0, 32]])
  assert out["q"].dtype == jnp.int8


def test_int8_and_int4_errors_are_at_most_half_a_step():
  w = np.random.default_rng(0).normal(size=(2, 12, 5)).astype(np.float32)  # [layers, I, O]
  for bits, group in ((8, 12), (4, 4)):
    leaf = quantized.quantize_2d(jnp.asarray(w), bits, group)
    groups = w.reshape(2, 12 // group, group, 5)
    scale = np.abs(groups).max(axis=2) / (127 if bits == 8 else 7)
    np.testing.assert_allclose(leaf["scale"], scale, rtol=1e-6)
    err = np.abs(np.asarray(quantized.dequantize_2d(leaf)) - w).reshape(groups.shape)
    assert (err <= scale[:, :, None, :] / 2 + 1e-6).all()
    assert err.max() > 0  # it is lossy


def test_int4_packing_round_trip_and_layout():
  q = np.random.default_rng(1).integers(-8, 8, size=(3, 10, 7)).astype(np.int8)
  packed = quantized.pack_int4(jnp.asarray(q))
  assert packed.dtype == jnp.uint8 and packed.shape == (3, 5, 7)
  np.testing.assert_array_equal(quantized.unpack_int4(packed), q)
  # row 2j in the low nibble, row 2j+1 in the high one, each stored as value + 8
  np.testing.assert_array_equal(quantized.pack_int4(jnp.array([[-8], [7]], jnp.int8)), [[240]])
  np.testing.assert_array_equal(quantized.pack_int4(jnp.array([[1], [-1]], jnp.int8)), [[7 * 16 + 9]])


def test_int4_group_is_the_largest_divisor_within_group_size():
  assert quantized.group_for(576, 4, 128) == 96
  assert quantized.group_for(1536, 4, 128) == 128
  assert quantized.group_for(576, 8, 128) == 576


def test_scanned_layers_round_trip_within_the_bound():
  cfg = ModelConfig(vocab_size=40, d_model=16, num_layers=2, num_heads=2, mlp_dim=32,
                    scan_layers=True, tie_embeddings=False, activation="swiglu", max_len=16)
  params = nn.meta.unbox(Transformer(cfg).init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 4), jnp.int32))["params"])
  qparams = jax.jit(lambda p: quantized.quantize_params(p, cfg, "int8"))(params)
  back = jax.jit(lambda p: quantized.dequantize_params(p, cfg))(qparams)
  names = {k.name for k in find_kernels(cfg)}
  assert {"layers/attn/out/kernel", "layers/mlp/wi_gate/kernel", "unembed/kernel",
          "embed/embedding", "pos_embed/embedding"} <= names
  for k in find_kernels(cfg):
    w, leaf = get_path(params, k.path), get_path(qparams, k.path)
    assert leaf["q"].shape == (2,) * k.lead + (k.in_size, k.out_size)
    bound = np.asarray(k.from_2d(jnp.broadcast_to(leaf["scale"], leaf["q"].shape))) / 2
    assert (np.abs(np.asarray(get_path(back, k.path)) - w) <= bound + 1e-7).all(), k.name
  assert jax.tree.structure(back) == jax.tree.structure(params)
  # the quantized forward (integer dots, scanned slices, untied unembed) = the dequantized one
  tokens = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6]])
  np.testing.assert_allclose(
      jax.jit(quantized.QuantizedTransformer(cfg).apply)({"params": qparams}, tokens),
      jax.jit(Transformer(cfg).apply)({"params": back}, tokens), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def quantized_dirs(trained_run, tmp_path_factory):
  root = tmp_path_factory.mktemp("quantized")
  dirs = {}
  for scheme in ("int8", "int4"):
    dirs[scheme] = str(root / scheme)
    with pytest.raises(SystemExit) as e:
      quantize_cli.main([f"--model_dir={trained_run}", f"--out_dir={dirs[scheme]}",
                         f"--scheme={scheme}", "--group_size=16"])
    assert e.value.code == 0
  return dirs


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_dir_decodes_as_its_dequantized_weights(quantized_dirs, trained_run, scheme):
  q = lm.load(quantized_dirs[scheme])
  with open(os.path.join(quantized_dirs[scheme], "model.json")) as f:
    assert json.load(f)["quantization"] == {"scheme": scheme, "group_size": 16, "skip": [],
                                            "method": "rtn", "calibration_task": None}
  # every matrix stays quantized on the device: no float copy of the weights is kept
  for k in find_kernels(q.config):
    leaf = get_path(q.params, k.path)
    assert leaf["q"].dtype == (jnp.int8 if scheme == "int8" else jnp.uint8), k.name
  float_model = lm.load(trained_run)
  # bytes: 1 (int8) or 1/2 (int4) per weight plus a float32 scale per output channel and group
  per_weight, rows = (1, lambda i: i) if scheme == "int8" else (0.5, lambda i: min(i, 16))
  expected = quantize.param_bytes(float_model.params) - sum(
      k.in_size * k.out_size * (4 - per_weight - 4 / rows(k.in_size))
      for k in find_kernels(q.config))
  assert quantize.param_bytes(q.params) == expected
  deq = LoadedModel(config=q.config, params=quantized.dequantize_params(q.params, q.config),
                    tokenizer=q.tokenizer)
  assert q.generate(PROMPTS, max_new_tokens=12) == deq.generate(PROMPTS, max_new_tokens=12)
  np.testing.assert_allclose(q.score_rolling(PROMPTS), deq.score_rolling(PROMPTS), rtol=1e-5)


def test_quantized_dir_sharded_gives_the_same_tokens(quantized_dirs):
  one = lm.load(quantized_dirs["int4"])
  sharded = lm.load(quantized_dirs["int4"], mesh_shape=(2, 2, 2))
  leaf = sharded.params["layer_0"]["mlp"]["wi"]["kernel"]
  assert len(leaf["q"].sharding.device_set) == 8
  assert leaf["q"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert one.generate(PROMPTS, max_new_tokens=12) == sharded.generate(PROMPTS, max_new_tokens=12)
  np.testing.assert_allclose(one.score(PROMPTS, [" a", "e", "!"])[0],
                             sharded.score(PROMPTS, [" a", "e", "!"])[0], rtol=1e-5)


def test_skip_keeps_the_embeddings_in_float(trained_run, tmp_path):
  out = str(tmp_path / "q")
  with pytest.raises(SystemExit) as e:
    quantize_cli.main([f"--model_dir={trained_run}", f"--out_dir={out}", "--scheme=int8",
                       "--skip=embed,pos_embed"])
  assert e.value.code == 0
  params = lm.load(out).params
  assert params["embed"]["embedding"].dtype == jnp.float32
  assert params["pos_embed"]["embedding"].dtype == jnp.float32
  assert params["layer_1"]["attn"]["out"]["kernel"]["q"].dtype == jnp.int8


def test_skip_unembed_of_a_tied_model_is_its_token_table(trained_run, tmp_path):
  """Issue 19.13: README's `--skip embed,unembed` on a tied model (whose token table is also
  its output projection) keeps that table in float instead of failing."""
  base = dict(vocab_size=68, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32)
  names = lambda cfg, skip: {k.name for k in find_kernels(cfg)} - {
      k.name for k in quantized.selected_kernels(cfg, 8, skip)}
  tied, untied = ModelConfig(**base), ModelConfig(**base, tie_embeddings=False)
  assert names(tied, ["unembed"]) == {"embed/embedding"}
  assert names(untied, ["unembed"]) == {"unembed/kernel"}
  assert names(untied, ["embed"]) == {"embed/embedding"}
  out = str(tmp_path / "q")
  with pytest.raises(SystemExit) as e:
    quantize_cli.main([f"--model_dir={trained_run}", f"--out_dir={out}", "--scheme=int8",
                       "--skip=embed,unembed"])
  assert e.value.code == 0
  q = lm.load(out)
  assert q.params["embed"]["embedding"].dtype == jnp.float32
  assert q.params["layer_1"]["mlp"]["wo"]["kernel"]["q"].dtype == jnp.int8
  assert q.generate(["ROMEO:"], max_new_tokens=4)[0]


def test_out_dir_is_never_the_source_around_it_or_a_foreign_directory(trained_run, tmp_path,
                                                                       capsys):
  """Issue 19.12: `--overwrite` with an out_dir that is, holds or lies inside the source is
  refused, and it replaces only a model dir: nothing else is ever deleted."""
  nest = tmp_path / "nest"
  shutil.copytree(trained_run, nest / "model")
  (nest / "notes.txt").write_text("not a model")
  os.symlink(nest / "model", tmp_path / "link")
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("not a model either")
  before = snapshot(tmp_path)

  def run(out, *extra):
    with pytest.raises(SystemExit) as e:
      quantize_cli.main([f"--model_dir={nest / 'model'}", f"--out_dir={out}", "--scheme=int8",
                         *extra])
    return e.value.code, capsys.readouterr().err

  for out, message in ((nest, "contains the input"), (nest / "model" / "q", "is inside the input"),
                       (nest / "model", "is the input"), (tmp_path / "link", "is the input"),
                       (other, "not a directory this command writes (no model.json)")):
    code, err = run(out, "--overwrite")
    assert code == 2 and message in err, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: ")
  assert snapshot(tmp_path) == before
  # A model dir is replaced whole with --overwrite (and only with it).
  assert run(tmp_path / "q")[0] == 0
  assert run(tmp_path / "q", "--scheme=int4")[0] == 2
  assert run(tmp_path / "q", "--scheme=int4", "--overwrite")[0] == 0
  with open(tmp_path / "q" / "model.json") as f:
    assert json.load(f)["quantization"]["scheme"] == "int4"


@pytest.mark.parametrize("args, message", [
    (["--model_dir=/nonexistent/m"], "not an lm model directory"),
    (["--skip=attention"], "no matrix path"),
    (["--group_size=0"], "--group_size"),
])
def test_user_errors_leave_nothing(trained_run, tmp_path, capsys, args, message):
  out = tmp_path / "sub" / "q"
  argv = [f"--model_dir={trained_run}", f"--out_dir={out}", "--scheme=int4"] + args
  with pytest.raises(SystemExit) as e:
    quantize_cli.main(argv)
  assert e.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "sub").exists()


def test_a_quantized_dir_is_not_quantized_again(quantized_dirs, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    quantize_cli.main([f"--model_dir={quantized_dirs['int8']}", f"--out_dir={tmp_path / 'x'}",
                       "--scheme=int4"])
  assert e.value.code == 2 and "already quantized" in capsys.readouterr().err
