"""SimCLR's augmentation on whole batches: uint8 [N, 3, H, W] in, float [N, 3, S, S] in [0, 1] out.

Each transform draws its random parameters per image on the CPU, from one torch.Generator (so a run is reproducible
and resumable on any device), then applies them to the whole batch at once. Drawing and applying are separate steps:
`TwoViews` draws both views' parameters (in the order two separate calls would), sends them to the device in one
copy, and transforms the 2N images in one pass.

Parameters are a dict per transform. Floating-point tensors are per-image values the device needs; integer tensors
are decisions the host makes (which operation runs, whether a step runs at all) and stay on the CPU, so applying a
transform never waits for the device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from simclr.train.config import AugmentConfig

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)
PAPER_VIEW_SIZE = 224  # the view size the paper's blur sigma (0.1-2 px) was set for

Params = dict[str, torch.Tensor]


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator) * (high - low) + low


def _chance(count: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """[count] floats, 1.0 with probability p, else 0.0."""
    return (torch.rand(count, generator=generator) < p).float()


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, 1, 1] on the batch's device and dtype, to broadcast over an image batch."""
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of [N, 3, H, W] as [N, 1, H, W]."""
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


class BatchTransform(ABC):
    """A random transform of an image batch: `draw` its parameters on the CPU, `apply` them on the batch's device.
    Calling it does both, for one batch."""

    @abstractmethod
    def draw(self, count: int, height: int, width: int) -> Params:
        """Parameters for `count` images of height x width."""

    @abstractmethod
    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """The transformed batch; `params` as `draw` made them, floating-point ones on the batch's device."""

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        count, _, height, width = images.shape
        return self.apply(images, to_device(self.draw(count, height, width), images.device))


class RandomResizedCrop(BatchTransform):
    """Crop a random area fraction in `scale` with aspect ratio in `ratio`, resized to `size` (bilinear,
    antialiased by roi_align's adaptive sampling). Takes uint8 or float, returns float in [0, 1]."""

    attempts = 10

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float],
                 generator: torch.Generator) -> None:
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"crop scale {scale}: need 0 < low <= high <= 1")
        self.size, self.scale, self.ratio, self.generator = size, scale, ratio, generator

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return self.size, self.size

    def boxes(self, count: int, height: int, width: int) -> torch.Tensor:
        """[count, 4] crop boxes (x0, y0, x1, y1) in pixels, drawn as torchvision's RandomResizedCrop draws them."""
        tries = (count, self.attempts)
        area = height * width * (torch.rand(tries, generator=self.generator) * (self.scale[1] - self.scale[0])
                                 + self.scale[0])
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(torch.rand(tries, generator=self.generator) * (log_high - log_low) + log_low)
        crop_w = torch.sqrt(area * aspect).round()
        crop_h = torch.sqrt(area / aspect).round()
        fits = (crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)
        first = fits.float().argmax(dim=1)  # the first attempt that fits, as torchvision does
        rows = torch.arange(count)
        crop_w, crop_h = crop_w[rows, first], crop_h[rows, first]
        # Where no attempt fits: the central crop at the nearest allowed aspect ratio.
        fallback = ~fits.any(dim=1)
        if fallback.any():
            in_ratio = width / height
            if in_ratio < self.ratio[0]:
                fw, fh = width, round(width / self.ratio[0])
            elif in_ratio > self.ratio[1]:
                fw, fh = round(height * self.ratio[1]), height
            else:
                fw, fh = width, height
            crop_w[fallback], crop_h[fallback] = float(fw), float(fh)
        x0 = torch.floor(torch.rand(count, generator=self.generator) * (width - crop_w + 1))
        y0 = torch.floor(torch.rand(count, generator=self.generator) * (height - crop_h + 1))
        return torch.stack([x0, y0, x0 + crop_w, y0 + crop_h], dim=1)

    def draw(self, count: int, height: int, width: int) -> Params:
        # roi_align's rows: (index of the source image, box). Draws for two views of one batch, concatenated, crop
        # each source image twice: one pass makes both views without copying the batch.
        return {"rois": torch.cat([torch.arange(count, dtype=torch.float32).unsqueeze(1),
                                   self.boxes(count, height, width)], dim=1)}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        crops = roi_align(pixels, params["rois"], output_size=self.size, spatial_scale=1.0, sampling_ratio=-1,
                          aligned=True)
        return crops.clamp_(0.0, 1.0)


class RandomHorizontalFlip(BatchTransform):
    """Mirror each image with probability p."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        self.p, self.generator = p, generator

    def draw(self, count: int, height: int, width: int) -> Params:
        return {"flip": _chance(count, self.p, self.generator)}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return torch.where(_per_image(params["flip"], images) > 0.5, images.flip(-1), images)


class ColorJitter(BatchTransform):
    """Brightness, contrast, saturation (factors in [1-x, 1+x]) and hue (shift in [-h, h] turns), applied with
    probability p per image. The order of the four is drawn once per draw (torchvision draws it per image); a batch
    made of several draws (two views) runs each step on the runs of images that share it."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float,
                 generator: torch.Generator) -> None:
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue jitter {hue}: must be in [0, 0.5]")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.p, self.generator = p, generator

    def draw(self, count: int, height: int, width: int) -> Params:
        g = self.generator
        apply = _chance(count, self.p, g) > 0.5
        return {
            "brightness": torch.where(apply, _uniform(count, 1 - self.brightness, 1 + self.brightness, g), 1.0),
            "contrast": torch.where(apply, _uniform(count, 1 - self.contrast, 1 + self.contrast, g), 1.0),
            "saturation": torch.where(apply, _uniform(count, 1 - self.saturation, 1 + self.saturation, g), 1.0),
            "hue": torch.where(apply, _uniform(count, -self.hue, self.hue, g), 0.0),
            "order": torch.randperm(4, generator=g).expand(count, 4),  # host-side: which step comes when
        }

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        steps = (lambda x, rows: adjust_brightness(x, params["brightness"][rows]),
                 lambda x, rows: adjust_contrast(x, params["contrast"][rows]),
                 lambda x, rows: adjust_saturation(x, params["saturation"][rows]),
                 lambda x, rows: adjust_hue(x, params["hue"][rows]))
        for position in range(4):
            runs = _runs(params["order"][:, position].tolist())
            parts = [steps[step](images[rows], rows) for step, rows in runs]
            images = parts[0] if len(parts) == 1 else torch.cat(parts)
        return images


def _runs(values: list[int]) -> list[tuple[int, slice]]:
    """Consecutive equal values as (value, slice of their positions)."""
    runs, start = [], 0
    for index in range(1, len(values) + 1):
        if index == len(values) or values[index] != values[start]:
            runs.append((values[start], slice(start, index)))
            start = index
    return runs


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale intensities by a per-image factor [N]."""
    return (images * _per_image(factor, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its mean grey level by a per-image factor [N]."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its greyscale version by a per-image factor [N]."""
    return _blend(images, grayscale(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by a per-image shift [N] in turns, as torchvision's adjust_hue (HSV), in one pass.

    A hue rotation keeps each pixel's max (V) and chroma (C = max - min), so RGB comes straight back from
    V - C * ramp(k) without building the S channel: about half the tensor operations of an HSV round trip.
    """
    r, g, b = images.unbind(1)
    maximum = torch.maximum(torch.maximum(r, g), b)
    chroma = maximum - torch.minimum(torch.minimum(r, g), b)
    red_max, green_max = r == maximum, g == maximum  # ties resolve to R, then G, as torchvision does
    # Hue in sixths of a turn: sector 0, 2 or 4 by the max channel, plus the position inside it, plus the shift.
    numerator = torch.where(red_max, g - b, torch.where(green_max, b - r + 2 * chroma, r - g + 4 * chroma))
    hue6 = numerator / chroma.clamp_min(1e-12) + 6 * _per_image(shift, images)[:, 0]
    offsets = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = torch.remainder(hue6.unsqueeze(1) + offsets, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maximum.unsqueeze(1) - chroma.unsqueeze(1) * ramp).clamp_(0.0, 1.0)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    ratio = _per_image(factor, images)
    return (ratio * images + (1 - ratio) * other).clamp_(0.0, 1.0)


class RandomGrayscale(BatchTransform):
    """Replace an image by its luma (on all three channels) with probability p."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        self.p, self.generator = p, generator

    def draw(self, count: int, height: int, width: int) -> Params:
        return {"gray": _chance(count, self.p, self.generator)}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        gray = _per_image(params["gray"], images) > 0.5
        return torch.where(gray, grayscale(images).expand_as(images), images)


class RandomGaussianBlur(BatchTransform):
    """Blur with probability p, sigma uniform in `sigma` per image, kernel side 10% of the image side (odd)."""

    def __init__(self, p: float, sigma: tuple[float, float], generator: torch.Generator) -> None:
        self.p, self.sigma, self.generator = p, sigma, generator

    def draw(self, count: int, height: int, width: int) -> Params:
        radius = max(1, int(0.1 * height) // 2)
        apply = _chance(count, self.p, self.generator) > 0.5
        sigma = _uniform(count, *self.sigma, self.generator)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(taps.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        identity = (taps == 0).float().expand_as(kernel)
        return {"kernel": torch.where(apply.view(-1, 1), kernel, identity),  # [N, K]
                "any": apply.any().long().view(1)}  # host-side: skip the convolutions when no image is blurred

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        if not params["any"].any():
            return images
        count, channels, height, width = images.shape
        kernel = params["kernel"]
        radius = kernel.shape[1] // 2
        # One grouped convolution per axis, with one kernel per image (shared by its channels).
        weight = kernel.to(images.dtype).repeat_interleave(channels, dim=0)  # [N*C, K]
        flat = images.reshape(1, count * channels, height, width)
        flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
        flat = F.conv2d(flat, weight.view(-1, 1, 1, 2 * radius + 1), groups=count * channels)
        flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
        flat = F.conv2d(flat, weight.view(-1, 1, 2 * radius + 1, 1), groups=count * channels)
        return flat.view(count, channels, height, width)


class Pipeline(BatchTransform):
    """Transforms in sequence; its parameters are theirs, in order."""

    def __init__(self, steps: Sequence[BatchTransform]) -> None:
        self.steps = list(steps)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        for step in self.steps:
            height, width = step.output_size(height, width)
        return height, width

    def draw(self, count: int, height: int, width: int) -> Params:
        params = {}
        for index, step in enumerate(self.steps):
            params.update({f"{index}.{key}": value for key, value in step.draw(count, height, width).items()})
            height, width = step.output_size(height, width)
        return params

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        for index, step in enumerate(self.steps):
            prefix = f"{index}."
            images = step.apply(images, {key.removeprefix(prefix): value for key, value in params.items()
                                         if key.startswith(prefix)})
        return images


def to_device(params: Params, device: torch.device, packed: bool = False) -> Params:
    """The floating-point parameters on `device` (integer ones stay on the CPU): one tensor at a time, or `packed`
    into one (pinned, for CUDA) buffer sent in one non-blocking copy."""
    moving = [key for key, value in params.items() if value.is_floating_point()]
    if device.type == "cpu" or not moving:
        return params
    if not packed:
        return {**params, **{key: params[key].to(device) for key in moving}}
    flat = torch.cat([params[key].reshape(-1) for key in moving])
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    pieces = flat.split([params[key].numel() for key in moving])
    return {**params, **{key: piece.view(params[key].shape) for key, piece in zip(moving, pieces, strict=True)}}


class TwoViews:
    """Apply one random transform twice, independently: the positive pair of SimCLR, as a batch [2N, ...] whose
    first half is view 1 and second half view 2.

    `one_pass` draws both views' parameters (in the order two calls would), copies them to the device at once and
    transforms the 2N images in one pass; otherwise the transform runs once per view (the reference path). Both give
    the same views from the same generator state.
    """

    def __init__(self, transform: BatchTransform, one_pass: bool = True) -> None:
        self.transform, self.one_pass = transform, one_pass

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.one_pass:
            return torch.cat([self.transform(images), self.transform(images)])
        count, _, height, width = images.shape
        draws = [self.transform.draw(count, height, width) for _ in range(2)]
        params = {key: torch.cat([draw[key] for draw in draws]) for key in draws[0]}
        return self.transform.apply(images, to_device(params, images.device, packed=True))


def simclr_augmentation(config: AugmentConfig, generator: torch.Generator) -> Pipeline:
    """The paper's augmentation: crop + flip, colour distortion of strength s, optional blur."""
    strength = config.color_strength
    steps = [
        RandomResizedCrop(config.image_size, config.crop_scale, config.crop_ratio, generator),
        RandomHorizontalFlip(config.flip_p, generator),
        ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength, config.color_p, generator),
        RandomGrayscale(config.grayscale_p, generator),
    ]
    if config.blur_p > 0:
        steps.append(RandomGaussianBlur(config.blur_p, blur_sigma(config), generator))
    return Pipeline(steps)


def blur_sigma(config: AugmentConfig) -> tuple[float, float]:
    """The blur's sigma range in pixels of the view: as given, or with `blur_scaled` relative to a 224 px view."""
    low, high = config.blur_sigma
    scale = config.image_size / PAPER_VIEW_SIZE if config.blur_scaled else 1.0
    return low * scale, high * scale


def crop_and_flip(size: int, crop_scale: tuple[float, float], generator: torch.Generator) -> Pipeline:
    """Fine-tuning's augmentation (SimCLR v1 B.5): a random resized crop and a horizontal flip, nothing else."""
    return Pipeline([RandomResizedCrop(size, crop_scale, (3 / 4, 4 / 3), generator),
                     RandomHorizontalFlip(0.5, generator)])
