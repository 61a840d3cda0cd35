"""GPTQ (lm.compression.gptq, lm-quantize --method gptq): round-to-nearest when the inputs are
uncorrelated, the blocked code equals the textbook row-by-row algorithm, the layer's output
error on the calibration inputs is far below round-to-nearest's, and the written directory
runs like any quantized one."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import lm
from lm.api import LoadedModel
from lm.cli import quantize as quantize_cli
from lm.compression import gptq
from lm.models import quantized


def _correlated_inputs(n, i, seed):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(i, i)) * 0.3 + np.eye(i)
  return (rng.normal(size=(n, i)) @ mix).astype(np.float32)  # [N, I]


def _row_by_row(w_IO, h_II, bits, group, act_order, clip, damp=0.01):
  """GPTQ as the paper's Algorithm 1 states it, one row at a time, in float64; with act_order
  the rows go by decreasing H diagonal and the group scales are fixed from W beforehand."""
  qmax = 127 if bits == 8 else 7
  w = w_IO.astype(np.float64).copy()
  scale_of = lambda rows: gptq._group_scales(rows, qmax, clip)
  scales = {g: scale_of(w[g * group:(g + 1) * group]) for g in range(len(w) // group)}
  order = np.argsort(-np.diag(h_II), kind="stable") if act_order else np.arange(len(w))
  w, h = w[order], h_II[order][:, order]
  h = h + damp * np.mean(np.diag(h)) * np.eye(len(h))
  u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
  q = np.zeros(w.shape)
  for i, row in enumerate(order):
    if not act_order and i % group == 0:
      scales[i // group] = scale_of(w[i:i + group])
    scale = scales[row // group]
    q[row] = np.clip(np.round(w[i] / scale), -qmax, qmax)
    err = (w[i] - q[row] * scale) / u[i, i]
    w[i + 1:] -= np.outer(u[i, i + 1:], err)
  return q


def _values(leaf):
  q = leaf["q"]
  return np.asarray(quantized.unpack_int4(jnp.asarray(q)) if q.dtype == np.uint8 else q)


@pytest.mark.parametrize("act_order, clip", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("bits, group", [(8, 48), (4, 8), (4, 12)])
def test_blocked_gptq_equals_the_row_by_row_algorithm(bits, group, act_order, clip):
  x = _correlated_inputs(200, 48, 0) * np.linspace(0.2, 2.0, 48)  # uneven H diagonal
  w = np.random.default_rng(1).normal(size=(48, 5)).astype(np.float32)
  h = (x.T @ x).astype(np.float64)
  leaf = gptq.gptq_2d(w, h, bits, group, block=16, act_order=act_order, clip=clip)
  np.testing.assert_array_equal(_values(leaf),
                                _row_by_row(w, h, bits, group, act_order, clip))
  assert leaf["scale"].shape == (48 // group, 5)


def test_clipped_scales_minimise_the_rounding_error():
  w = np.random.default_rng(6).standard_t(3, size=(16, 40))  # heavy tails: clipping pays
  def error(scale):
    return np.sum((w - np.clip(np.round(w / scale), -7, 7) * scale) ** 2, axis=0)
  chosen = gptq._group_scales(w, 7, clip=True)
  top = np.abs(w).max(axis=0)
  candidates = [error(top * r / 7) for r in np.linspace(1.0, 0.5, 11)]
  np.testing.assert_allclose(error(chosen), np.min(candidates, axis=0), rtol=1e-12)
  assert (chosen < top / 7).any()  # some columns clip
  np.testing.assert_allclose(gptq._group_scales(w, 7, clip=False), top / 7)


def test_uncorrelated_inputs_give_round_to_nearest():
  w = np.random.default_rng(2).normal(size=(32, 6)).astype(np.float32)
  h = np.diag(np.random.default_rng(3).uniform(0.5, 2.0, size=32))
  for bits, group in ((8, 32), (4, 8)):
    leaf = gptq.gptq_2d(w, h, bits, group, act_order=False, clip=False)
    rtn = quantized.quantize_2d(jnp.asarray(w), bits, group)
    np.testing.assert_array_equal(leaf["q"], rtn["q"])
    np.testing.assert_allclose(leaf["scale"], rtn["scale"], rtol=1e-6)


def test_gptq_output_error_is_well_below_round_to_nearest():
  x = _correlated_inputs(400, 64, 4)
  w = np.random.default_rng(5).normal(size=(64, 16)).astype(np.float32)
  ours = gptq.gptq_2d(w, x.T @ x, bits=4, group=16)
  rtn = quantized.quantize_2d(jnp.asarray(w), 4, 16)
  err = {name: np.sum((x @ (np.asarray(quantized.dequantize_2d(leaf)) - w)) ** 2)
         for name, leaf in (("gptq", ours), ("rtn", rtn))}
  assert err["gptq"] < 0.7 * err["rtn"], err  # 0.54 here (0.62 without act-order and clipping)


def test_lm_quantize_gptq_dir_runs_as_its_dequantized_weights(trained_run, tmp_path):
  calib = tmp_path / "calib.txt"
  calib.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 8)
  out = str(tmp_path / "q")
  with pytest.raises(SystemExit) as e:
    quantize_cli.main([f"--model_dir={trained_run}", f"--out_dir={out}", "--scheme=int4",
                       "--group_size=16", "--method=gptq", f"--calibration_task=ppl:{calib}",
                       "--calibration_rows=4", "--calibration_len=32"])
  assert e.value.code == 0
  with open(os.path.join(out, "model.json")) as f:
    assert json.load(f)["quantization"] == {
        "scheme": "int4", "group_size": 16, "skip": [], "method": "gptq",
        "calibration_task": f"ppl:{calib}"}
  q = lm.load(out)
  assert q.params["layer_0"]["mlp"]["wi"]["kernel"]["q"].dtype == jnp.uint8
  deq = LoadedModel(config=q.config, params=quantized.dequantize_params(q.params, q.config),
                    tokenizer=q.tokenizer)
  np.testing.assert_allclose(q.score_rolling(["ROMEO:"]), deq.score_rolling(["ROMEO:"]),
                             rtol=1e-5)
  # the GPTQ weights differ from round-to-nearest's (the calibration moved them)
  rtn = quantized.quantize_params(lm.load(trained_run).params, q.config, "int4", 16)
  assert not np.array_equal(q.params["layer_0"]["mlp"]["wi"]["kernel"]["q"],
                            rtn["layer_0"]["mlp"]["wi"]["kernel"]["q"])


def test_gptq_without_calibration_is_a_user_error(trained_run, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    quantize_cli.main([f"--model_dir={trained_run}", f"--out_dir={tmp_path / 'q'}",
                       "--scheme=int8", "--method=gptq"])
  assert e.value.code == 2 and "--calibration_task" in capsys.readouterr().err
  assert not (tmp_path / "q").exists()
