"""The fast training step (one augmentation pass, no host sync, multi-tensor LARS) against the reference step."""

import shutil
from pathlib import Path

import pytest
import torch

from simclr.train.augment import Pipeline, TwoViews, simclr_augmentation
from simclr.train.config import AugmentConfig, build_config
from simclr.train.epochs import TrainingError
from simclr.train.loop import Trainer
from simclr.train.runtime import (
    COMPILE_CACHE_ENVIRONMENT,
    compile_cache_path,
    load_compile_cache,
    native_cpu_bf16,
    resolve_precision,
    save_compile_cache,
)


def _trainer(folder: Path, out: Path, train_step: str, **overrides) -> Trainer:
    config = build_config("photo", {"data": str(folder), "model.width": 0.25, "augment.image_size": 16,
                                    "batch_size": 8, "workers": 0, "device": "cpu", "precision": "fp32",
                                    "train_step": train_step, "epochs": 2, **overrides})
    return Trainer(config, out, torch.device("cpu"), resume=False)


def test_the_fast_step_equals_the_reference_step(image_folder: Path, tmp_path: Path) -> None:
    fast, reference = (_trainer(image_folder, tmp_path / kind, kind) for kind in ("fast", "reference"))
    batch = next(fast.batches(0, 0))
    assert torch.equal(batch, next(reference.batches(0, 0)))
    (fast_loss, fast_accuracy), (loss, accuracy) = fast.train_step(batch), reference.train_step(batch)
    assert isinstance(fast_loss, torch.Tensor) and fast_loss.ndim == 0 and not fast_loss.requires_grad
    torch.testing.assert_close(fast_loss, loss, rtol=1e-5, atol=0)
    assert fast_accuracy.item() == accuracy.item()
    for (name, one), other in zip(fast.model.named_parameters(), reference.model.parameters(), strict=True):
        torch.testing.assert_close(one.grad, other.grad, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(one, other, rtol=1e-5, atol=1e-7, msg=name)
    # and the generators stand at the same place, so the next steps draw the same views too
    assert torch.equal(fast.augment_generator.get_state(), reference.augment_generator.get_state())


@pytest.mark.parametrize("blur_p", [0.0, 0.5])
def test_one_pass_gives_the_views_of_two_calls(blur_p: float) -> None:
    images = torch.randint(0, 256, (32, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = AugmentConfig(image_size=24, blur_p=blur_p)
    one_pass = TwoViews(simclr_augmentation(config, torch.Generator().manual_seed(5)))(images)
    per_view = TwoViews(simclr_augmentation(config, torch.Generator().manual_seed(5)), one_pass=False)(images)
    assert one_pass.shape == (64, 3, 24, 24)
    assert torch.equal(one_pass, per_view)


def test_parameters_are_drawn_per_image_in_both_views() -> None:
    # torchvision's v2 batch transforms draw one set per batch (pytorch/vision#8484): here every image has its own.
    config = AugmentConfig(image_size=24, blur_p=0.5, blur_sigma=(0.5, 2.0))  # sigma 0.1 leaves the image as it is
    augmentation: Pipeline = simclr_augmentation(config, torch.Generator().manual_seed(0))
    views = [augmentation.draw(4000, 40, 48) for _ in range(2)]
    for draw in views:
        boxes = draw["0.rois"][:, 1:]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (40 * 48)
        assert area.min() < 0.12 and area.max() > 0.9 and len(area.unique()) > 200
        assert draw["1.flip"].mean().item() == pytest.approx(config.flip_p, abs=0.03)
        jittered = draw["2.brightness"] != 1.0
        assert jittered.float().mean().item() == pytest.approx(config.color_p, abs=0.03)
        assert draw["2.hue"][jittered].std() > 0.05 * config.color_strength
        assert draw["3.gray"].mean().item() == pytest.approx(config.grayscale_p, abs=0.03)
        blurred = (draw["4.kernel"][:, draw["4.kernel"].shape[1] // 2] < 1).float().mean().item()
        assert blurred == pytest.approx(config.blur_p, abs=0.03)
    # the two views of an image are drawn independently
    assert (views[0]["0.rois"] != views[1]["0.rois"]).any(dim=1).float().mean() > 0.99


def test_a_non_finite_loss_stops_the_run_when_read_and_saves_nothing(image_folder: Path, tmp_path: Path) -> None:
    trainer = _trainer(image_folder, tmp_path / "run", "fast", **{"optim.base_lr": 1e30, "log_every": 2})
    with pytest.raises(TrainingError, match=r"loss became nan at step \d+"):
        trainer.run()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16() -> None:
    with open("/proc/cpuinfo") as file:
        flags = set(next(line for line in file if line.startswith("flags")).split(":")[1].split())
    assert native_cpu_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert resolve_precision(torch.device("cpu"), "auto") == ("bf16" if native_cpu_bf16() else "fp32")
    assert resolve_precision(torch.device("cpu"), "fp32") == "fp32"


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="Inductor needs a C++ compiler on the CPU")
@pytest.mark.slow
def test_inductor_cache_is_saved_and_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPILE_CACHE_ENVIRONMENT, str(tmp_path / "cache.bin"))
    path = compile_cache_path(torch.device("cpu"))
    assert path == tmp_path / "cache.bin"
    compiled = torch.compile(lambda x: torch.relu(x) * 2 + 1, dynamic=False)
    torch.testing.assert_close(compiled(torch.arange(-2.0, 3.0)), torch.tensor([1.0, 1, 1, 3, 5]))
    save_compile_cache(path)
    assert path.stat().st_size > 0
    load_compile_cache(path)  # a new process would start from these kernels
