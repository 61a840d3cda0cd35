"""Loss, optimizer and step semantics against hand-computed references."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm.training.optimizers import OptimizerConfig, decay_mask, make_optimizer, make_schedule
from lm.training.step import LossConfig, cross_entropy
from train_utils import NANO, Trainer, char_batches, mesh_of, trainer_for


def _np_ce(logits, targets, weights, eps=0.0, z=0.0):
  logz = np.log(np.exp(logits).sum(-1))
  nll = logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  nll = (1 - eps) * nll + eps * (logz - logits.mean(-1)) + z * logz**2
  return (nll * weights).sum(), weights.sum()


@pytest.mark.parametrize("eps, z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4)])
def test_cross_entropy_matches_numpy(eps, z):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(2, 5))
  weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)  # padding at the end
  loss, w, _, nll = cross_entropy(jnp.array(logits), jnp.array(targets), jnp.array(weights),
                                  LossConfig(label_smoothing=eps, z_loss=z))
  ref_loss, ref_w = _np_ce(logits.astype(np.float64), targets, weights, eps, z)
  ref_nll, _ = _np_ce(logits.astype(np.float64), targets, weights)  # what eval reports
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(float(nll), ref_nll, rtol=1e-5)
  assert float(w) == ref_w == 8


def test_padding_never_counts():
  logits = jnp.zeros((1, 3, 4)).at[0, 2].set(jnp.array([9.0, -9, -9, -9]))
  with_pad, _, _, _ = cross_entropy(logits, jnp.array([[1, 2, 3]]), jnp.array([[1, 1, 0]]))
  np.testing.assert_allclose(float(with_pad), 2 * np.log(4), rtol=1e-6)


def test_warmup_cosine_schedule():
  sched = make_schedule(OptimizerConfig(learning_rate=1e-3, warmup_steps=100,
                                        end_learning_rate=1e-4), total_steps=2000)
  # Warmup starts at peak / warmup (the first update moves the weights), peak at step 100.
  np.testing.assert_allclose(float(sched(0)), 1e-5, rtol=1e-5)
  np.testing.assert_allclose(float(sched(50)), 1e-5 + 0.5 * (1e-3 - 1e-5), rtol=1e-5)
  np.testing.assert_allclose(float(sched(100)), 1e-3, rtol=1e-6)
  mid = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.pi * 950 / 1900))
  np.testing.assert_allclose(float(sched(1050)), mid, rtol=1e-5)
  np.testing.assert_allclose(float(sched(2000)), 1e-4, rtol=1e-5)


def test_weight_decay_skips_norms_and_biases():
  params = {"ln": {"scale": jnp.ones(3), "bias": jnp.zeros(3)},
            "dense": {"kernel": jnp.ones((3, 3)), "bias": jnp.zeros(3)},
            "stacked_ln": {"scale": jnp.ones((2, 3))}}
  mask = decay_mask(params)
  assert mask == {"ln": {"scale": False, "bias": False}, "dense": {"kernel": True, "bias": False},
                  "stacked_ln": {"scale": False}}
  tx = make_optimizer(OptimizerConfig(learning_rate=0.1, warmup_steps=0, decay="constant",
                                      weight_decay=0.5, clip_norm=None), 10)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)
  np.testing.assert_allclose(new["ln"]["scale"], 1.0)


def test_no_warmup_starts_at_peak():
  sched = make_schedule(OptimizerConfig(learning_rate=1e-3, warmup_steps=0, decay="constant"), 10)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 5)], [1e-3, 1e-3], rtol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_weight_decay_is_decoupled_and_scaled_by_the_schedule(name):
  # Zero gradients: only decay moves the weights, kernel_t+1 = kernel_t * (1 - lr_t * wd),
  # with lr_t the scheduled rate (here warmup then cosine), the same for both optimizers.
  cfg = OptimizerConfig(name=name, learning_rate=0.1, warmup_steps=2, end_learning_rate=0.01,
                        weight_decay=0.5, clip_norm=None)
  params = {"dense": {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.ones(3)}}
  tx = make_optimizer(cfg, total_steps=6)
  opt_state = tx.init(params)
  expected = 2.0
  for t in range(6):
    lr_t = 0.05 + 0.05 * t / 2 if t < 2 else 0.01 + 0.045 * (1 + np.cos(np.pi * (t - 2) / 4))
    expected *= 1 - lr_t * 0.5
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, opt_state = tx.update(zero_grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["dense"]["kernel"], expected, rtol=1e-5)
  np.testing.assert_allclose(params["dense"]["bias"], 1.0)


@pytest.fixture(scope="module")
def one_device():
  return mesh_of((1, 1, 1))


def test_gradient_accumulation_matches_one_big_batch(one_device):
  # eps=1: the first update is about lr * grad, so the params compare the gradients (Adam's
  # usual g / (|g| + 1e-8) would blow float noise in near-zero gradients up to lr).
  opt = OptimizerConfig(warmup_steps=0, decay="constant", learning_rate=1.0, eps=1.0)
  plain, accum = Trainer(one_device, opt=opt), Trainer(one_device, opt=opt, grad_accum_steps=4)
  batch = char_batches()[0]
  s1, m1 = plain.step(plain.init(), batch)
  s2, m2 = accum.step(accum.init(), batch)
  np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m1["nll"]), float(m2["nll"]), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), s1.params, s2.params)


@pytest.mark.parametrize("changes", [dict(remat="full"), dict(remat="save_dots"),
                                     dict(scan_layers=True)])
def test_remat_and_scan_do_not_change_the_loss(changes):
  import dataclasses
  base = trainer_for((1, 1, 1))
  other = Trainer(base.mesh, cfg=dataclasses.replace(NANO, **changes))
  _, ref = base.losses(base.init(), char_batches()[:2])
  state = other.init()
  if changes.get("scan_layers"):  # same weights, stacked on a leading "layers" axis
    state = state.replace(params=_stack_layers(base.init().params))
  _, got = other.losses(state, char_batches()[:2])
  np.testing.assert_allclose(got, ref, rtol=2e-6)


def _stack_layers(params):
  layers = [params[f"layer_{i}"] for i in range(NANO.num_layers)]
  out = {k: v for k, v in params.items() if not k.startswith("layer_")}
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return out


@pytest.mark.parametrize("opt, dtype", [(OptimizerConfig(name="adafactor", learning_rate=0.5,
                                                         warmup_steps=0), "float32"),
                                        (OptimizerConfig(learning_rate=3e-3, warmup_steps=0),
                                         "bfloat16")])
def test_adafactor_and_bf16_train(one_device, opt, dtype):
  import dataclasses
  trainer = Trainer(one_device, cfg=dataclasses.replace(NANO, dtype=dtype), opt=opt)
  state = trainer.init()
  batch = char_batches()[0]
  losses = []
  for _ in range(15):
    state, metrics = trainer.step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.3
