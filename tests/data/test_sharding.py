"""The ranks' shares of the data: dealt by emolightning itself (the trainer runs with `use_distributed_sampler=False`)."""

from __future__ import annotations

import inspect
import random

import pytest
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from emolightning.data.batching import LengthGroupedSampler, shard
from emolightning.training.trainer import EmotionTrainer


@pytest.mark.parametrize("rows", [1, 2, 5, 41, 42])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_an_evaluation_order_is_dealt_as_lightnings_distributed_sampler_dealt_it(rows, world):
    order = random.Random(rows).sample(range(rows), rows)
    for rank in range(world):
        assert shard(order, world, rank) == list(DistributedSamplerWrapper(order, num_replicas=world, rank=rank, shuffle=False))


def test_lightning_leaves_the_samplers_alone_and_sets_the_training_epoch():
    assert inspect.signature(EmotionTrainer).parameters["use_distributed_sampler"].default is False
    sampler = LengthGroupedSampler([3, 1, 2, 5, 4, 6], batch_size=2, seed=0, num_replicas=1, rank=0)
    first = list(sampler)
    sampler.set_epoch(1)  # what Lightning calls on a loader's sampler each epoch
    assert sampler.epoch == 1 and sorted(list(sampler)) == sorted(first)
