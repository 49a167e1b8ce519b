"""Sparse training under DDP, for real: two processes joined by torch.distributed (gloo, on CPU) run the trainer's
own `optimizer_step` (L1 term, Taylor scores, the zeroing of a sparsity target) on a DDP-wrapped model.

Ultralytics' DDP launcher needs CUDA (it sets a CUDA device per rank and builds DDP with `device_ids`), so the test
does not go through it: it builds a real `SlimTrainer`, wraps its model in `DistributedDataParallel` itself, as
Ultralytics' `_setup_train` does, and feeds it batches through the trainer's `preprocess_batch`. Nothing in
Ultralytics is patched. BatchNorm runs on its running statistics (eval mode), so that a rank's half batch gives
the same gradients as the whole batch in one process, which the test checks against.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from yoloslim.channels import prunable_bn_names
from yoloslim.trainer import SlimTrainer

from .conftest import build_model

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines: `-m "not slow"` leaves them out


STEPS_PER_EPOCH, EPOCHS, BATCH, IMGSZ = 3, 3, 4, 64


def _images() -> list[torch.Tensor]:
    """The global batches, the same in every process."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 256, (BATCH, 3, IMGSZ, IMGSZ), generator=g, dtype=torch.uint8)
        for _ in range(STEPS_PER_EPOCH * EPOCHS)
    ]


def _train(rank: int, world: int, port: int, data: str, out: str) -> None:
    """Sparse-train a tiny model on this rank's share of each global batch; save its BN gammas."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    overrides = dict(model="yolov8n.yaml", data=data, epochs=EPOCHS, imgsz=IMGSZ, batch=BATCH, device="cpu")
    overrides.update(sr=0.01, sparsity=0.5, project=out, name=f"world{world}-rank{rank}", exist_ok=True, plots=False)
    trainer = SlimTrainer(overrides=overrides)
    torch.manual_seed(0)
    model = build_model()  # the same initial weights in every process
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    trainer.model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    trainer.world_size = world
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer.ema = None
    trainer.train_loader = [None] * STEPS_PER_EPOCH
    for step, images in enumerate(_images()):
        trainer.epoch = step // STEPS_PER_EPOCH
        batch = trainer.preprocess_batch({"img": images.chunk(world)[rank]})
        loss = sum((t.float() ** 2).mean() for t in _tensors(trainer.model(batch["img"])))
        loss.backward()
        trainer.optimizer_step()
    names = prunable_bn_names(model)
    modules = dict(model.named_modules())
    torch.save({n: modules[n].weight.detach().clone() for n in names}, Path(out) / f"world{world}-rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor of the head's training output (a tensor, or lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out
    return [t for item in items for t in _tensors(item)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_zero_the_same_channels_as_one_process(tiny_data, tmp_path) -> None:
    mp.spawn(_train, args=(2, _free_port(), tiny_data, str(tmp_path)), nprocs=2, join=True)
    mp.spawn(_train, args=(1, 0, tiny_data, str(tmp_path)), nprocs=1, join=True)  # its own process: one thread there
    rank0, rank1, single = (torch.load(tmp_path / f"{n}.pt") for n in ("world2-rank0", "world2-rank1", "world1-rank0"))
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # the replicas never drift apart
        assert torch.equal(rank0[name] == 0, single[name] == 0), name  # the same channels zeroed as one process
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5)
    zeroed = sum(int((g == 0).sum()) for g in rank0.values()) / sum(g.numel() for g in rank0.values())
    assert zeroed >= 0.45  # the target (0.5 of the prunable channels, residual streams apart) was reached
