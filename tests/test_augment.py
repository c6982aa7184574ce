import pytest
import torch
import torchvision.transforms.v2.functional as TF

from simclr.train.augment import (
    ColorJitter,
    RandomGaussianBlur,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    TwoViews,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    simclr_augmentation,
)
from simclr.train.config import AugmentConfig


def _images(count: int = 16, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("blur_p", [0.0, 0.5])
def test_augmentation_gives_float_views_of_the_requested_size(blur_p: float) -> None:
    augment = simclr_augmentation(AugmentConfig(image_size=24, blur_p=blur_p), torch.Generator().manual_seed(0))
    views = augment(_images())
    assert views.shape == (16, 3, 24, 24) and views.dtype == torch.float32
    assert views.min() >= 0.0 and views.max() <= 1.0


def test_augmentation_is_reproducible_from_the_seed_and_views_differ() -> None:
    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return TwoViews(simclr_augmentation(AugmentConfig(), torch.Generator().manual_seed(seed)))(_images())

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], other[0])


def test_crop_boxes_stay_inside_and_cover_the_scale_range() -> None:
    crop = RandomResizedCrop(32, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    boxes = crop.boxes(4000, 40, 60)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 60).all() and (boxes[:, 3] <= 40).all()
    square = crop.boxes(4000, 50, 50)
    area = (square[:, 2] - square[:, 0]) * (square[:, 3] - square[:, 1]) / (50 * 50)
    aspect = (square[:, 2] - square[:, 0]) / (square[:, 3] - square[:, 1])
    assert area.min() < 0.12 and area.max() > 0.9
    assert aspect.min() > 0.6 and aspect.max() < 1.6


def test_full_crop_reproduces_the_image() -> None:
    images = _images(4, 32, 32)
    crop = RandomResizedCrop(32, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(crop(images), images.float() / 255, atol=1e-5, rtol=0)


def test_flip_mirrors_exactly_the_chosen_images() -> None:
    images = torch.rand(64, 3, 8, 8)
    flipped = RandomHorizontalFlip(0.5, torch.Generator().manual_seed(0))(images)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    kept = (flipped == images).flatten(1).all(1)
    assert (mirrored | kept).all() and 10 < mirrored.sum() < 54


def test_grayscale_makes_channels_equal() -> None:
    images = torch.rand(8, 3, 8, 8)
    out = RandomGrayscale(1.0, torch.Generator())(images)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


@pytest.mark.parametrize("factor", [0.4, 1.6])
def test_colour_adjustments_match_torchvision(factor: float) -> None:
    images = torch.rand(4, 3, 16, 16)
    per_image = torch.full((4,), factor)
    torch.testing.assert_close(adjust_contrast(images, per_image), TF.adjust_contrast(images, factor), atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(adjust_saturation(images, per_image), TF.adjust_saturation(images, factor),
                               atol=1e-4, rtol=0)
    shift = (factor - 1) / 4
    torch.testing.assert_close(adjust_hue(images, torch.full((4,), shift)), TF.adjust_hue(images, shift),
                               atol=1e-4, rtol=0)


def test_colour_jitter_with_p_zero_changes_nothing() -> None:
    images = torch.rand(8, 3, 8, 8)
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.0, generator=torch.Generator())
    torch.testing.assert_close(jitter(images), images, atol=1e-5, rtol=0)


def test_blur_smooths_and_keeps_the_mean() -> None:
    images = torch.rand(6, 3, 40, 40)
    blurred = RandomGaussianBlur(1.0, (1.0, 2.0), torch.Generator().manual_seed(0))(images)
    assert blurred.shape == images.shape
    assert (blurred.std(dim=(1, 2, 3)) < images.std(dim=(1, 2, 3))).all()
    torch.testing.assert_close(blurred.mean(), images.mean(), atol=1e-2, rtol=0)
