"""Two real gloo processes with global batch 2B against one process with batch 2B."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from simclr.train import distributed
from simclr.train.config import ModelConfig
from simclr.train.loss import contrastive_step
from simclr.train.model import SimCLRModel

WORLD = 2
LOCAL_BATCH = 4
TEMPERATURE = 0.5
MODEL = ModelConfig(arch="resnet18", width=0.125)


def _model() -> SimCLRModel:
    torch.manual_seed(0)
    return SimCLRModel(MODEL)


def _worker(rank: int, init_file: str, views_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        view1, view2 = torch.load(views_file)
        mine = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        model = distributed.convert_batch_norm(_model(), torch.device("cpu"))
        network = DistributedDataParallel(model)
        loss, accuracy = contrastive_step(network, torch.cat([view1[mine], view2[mine]]), TEMPERATURE)
        (loss * distributed.world_size()).backward()
        if rank == 0:
            grads = {name: p.grad.clone() for name, p in model.named_parameters()}
            torch.save({"loss": loss.detach(), "accuracy": accuracy, "grads": grads,
                        "running_mean": model.encoder.stem[1].running_mean.clone()}, result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    views = (torch.rand(WORLD * LOCAL_BATCH, 3, 32, 32, generator=generator),
             torch.rand(WORLD * LOCAL_BATCH, 3, 32, 32, generator=generator))
    torch.save(views, tmp_path / "views.pt")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "views.pt"), str(tmp_path / "result.pt")),
             nprocs=WORLD, join=True)
    parallel = torch.load(tmp_path / "result.pt")

    model = _model()
    loss, accuracy = contrastive_step(model, torch.cat(views), TEMPERATURE)
    loss.backward()

    assert parallel["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert parallel["accuracy"].item() == pytest.approx(accuracy.item())
    for name, param in model.named_parameters():
        torch.testing.assert_close(parallel["grads"][name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Global batch norm: the running statistics saw the whole global batch.
    torch.testing.assert_close(parallel["running_mean"], model.encoder.stem[1].running_mean, rtol=1e-4, atol=1e-6)


def test_single_process_fallbacks() -> None:
    assert distributed.rank() == 0 and distributed.world_size() == 1
    tensor = torch.randn(3, 2)
    assert distributed.gather_with_own_gradient(tensor) is tensor
    assert distributed.any_rank([True, False], torch.device("cpu")) == [True, False]
