"""One code path on any mesh: same losses on 1 and 8 devices, params sharded as the rules say."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lm.errors import UserError
from lm.models.config import ModelConfig
from lm.sharding import check_divisible, check_model_divisible, make_mesh
from train_utils import NANO, char_batches, mesh_of, trainer_for

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 1, 4), (1, 2, 4)]


@pytest.fixture(scope="module")
def reference_losses():
  trainer = trainer_for((1, 1, 1))
  _, losses = trainer.losses(trainer.init(), char_batches()[:3])
  return losses


@pytest.mark.parametrize("shape", MESHES[1:])
def test_first_three_losses_agree_across_meshes(shape, reference_losses):
  trainer = trainer_for(shape)
  _, losses = trainer.losses(trainer.init(), char_batches()[:3])
  assert reference_losses[0] > 3.0  # an untrained model: about log(68)
  np.testing.assert_allclose(losses, reference_losses, atol=1e-5, rtol=0)


def test_params_are_sharded_by_the_rules():
  trainer = trainer_for((1, 2, 4))
  params = trainer.init().params
  assert params["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
  assert params["layer_0"]["mlp"]["wi"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert params["layer_0"]["mlp"]["wo"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert params["layer_0"]["attn"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert params["layer_0"]["ln_attn"]["scale"].sharding.spec == P("fsdp")
  # Each device holds only its shard: 68x32 split 4 ways on vocab and 2 on embed.
  shard = params["embed"]["embedding"].addressable_shards[0].data
  assert shard.shape == (17, 16)


def test_optimizer_moments_follow_their_params():
  trainer = trainer_for((1, 2, 4))
  state = trainer.init()
  mu = state.opt_state[1][0].mu  # chain(clip, adamw): adamw's ScaleByAdamState
  assert mu["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")


@pytest.mark.parametrize("shape, message", [
    ((3, 1, 1), "needs 3 devices"),
    ((3, -1, 1), "does not divide"),
    ((0, 1, 1), "MESH_SHAPE must be"),
])
def test_bad_mesh_shapes(shape, message):
  with pytest.raises(UserError, match=message):
    make_mesh(shape)


def test_indivisible_batch_and_heads():
  mesh = mesh_of((2, 1, 4))
  with pytest.raises(UserError, match="BATCH_SIZE=3"):
    check_divisible(mesh, 3, 4, 4)
  with pytest.raises(UserError, match="num_heads=6"):
    check_divisible(mesh, 8, 6, 6)


def test_indivisible_model_sizes_and_vocab_padding():
  tensor, fsdp = mesh_of((1, 1, 4)), mesh_of((1, 4, 1))
  gpt2 = ModelConfig(vocab_size=50257, d_model=64, num_heads=4, mlp_dim=256)
  with pytest.raises(UserError, match="vocab_size=50257 .* by the tensor axis size 4; pad it"):
    check_model_divisible(tensor, gpt2)
  check_model_divisible(tensor, ModelConfig(vocab_size=50257, vocab_pad_multiple=128, d_model=64,
                                            num_heads=4, mlp_dim=256))  # 50,304 rows
  with pytest.raises(UserError, match="mlp_dim=250"):
    check_model_divisible(tensor, ModelConfig(mlp_dim=250))
  with pytest.raises(UserError, match="d_model=66 is not divisible by the fsdp axis size 4"):
    check_model_divisible(fsdp, ModelConfig(d_model=66, num_heads=3))


def test_devices_are_fake_cpus():
  assert jax.device_count() == 8 and NANO.num_heads == 4
