"""OpenCV's resampling kernel for the training augmentation when it runs in tf.data on the CPU.

The random draws stay in the Keras layers (`affine.RandomAffine`): only the
kernel that applies a drawn transform changes, so a seed gives the same transforms on either kernel and the two
agree to interpolation error (tested on real CT and ultrasound). OpenCV releases the GIL inside its kernels, so
the images of a batch are spread over a small thread pool. Where the augmentation runs on the model's device
(`data.augment_on: model`) the TF ops stay: they are what a GPU runs.

Measured here (`python -m bench.augment`): see bench/RESULTS.md.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

# TF's fill modes (ImageProjectiveTransformV3) as OpenCV borders: reflect is (d c b a | a b c d), edge repeated
# (TF's wrap repeats with a period of W - 1, not W: no OpenCV border matches it, so RandomAffine keeps it on TF)
_BORDERS = {"constant": "BORDER_CONSTANT", "reflect": "BORDER_REFLECT", "nearest": "BORDER_REPLICATE"}
FILL_MODES = tuple(_BORDERS)  # the fill modes `warp_affine` resamples as TF does


@lru_cache(maxsize=1)
def opencv():
    """The cv2 module, or None where OpenCV is not installed (the TF kernels are used then)."""
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(1)  # one image per pool thread: OpenCV's own row split only adds handoffs at these sizes
    return cv2


def pipeline_kernel() -> str:
    """The kernel for augmentation in tf.data on the CPU: "opencv" where OpenCV imports (3.6-3.8x TF's resampler
    on 224 px CT here), else "tf". The model's front (`augment.training_front`) always runs TF's ops."""
    return "opencv" if opencv() is not None else "tf"


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@lru_cache(maxsize=1)
def _pool():
    return ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="medkeras-cv")


def _each(fn, n: int):
    """fn(i) for every image of a batch, in one contiguous run of images per worker (OpenCV's kernels run without
    the GIL): a handful of tasks a batch, not one per image. A batch of 32 warps at 224 px measured the same within
    this machine's noise either way (4.0-5.7 ms, against 4.3-6.2 one task per image; 7.4-8.1 on one thread)."""
    parts = min(_workers(), n // 4)
    if parts < 2:
        for i in range(n):
            fn(i)
        return
    bounds = [n * k // parts for k in range(parts + 1)]

    def run(k):
        for i in range(bounds[k], bounds[k + 1]):
            fn(i)

    list(_pool().map(run, range(parts)))


def _planes(channels: int) -> list:
    """The channel slices OpenCV resamples exactly: blocks of 4 (the most its remap takes at once), then 3 or single
    channels. Never 2: its 2-channel float path was off by up to 4 grey levels (found by a new-user trial with two
    windows; 1, 3 and 4 channels agree with TF's kernel to 0.006)."""
    planes, c = [], 0
    while c < channels:
        width = 4 if channels - c >= 4 else (3 if channels - c == 3 else 1)
        planes.append(slice(c, c + width))
        c += width
    return planes


def warp_affine(images: np.ndarray, transforms: np.ndarray, interpolation: str = "bilinear",
                fill_mode: str = "reflect", fill_value: float = 0.0) -> np.ndarray:
    """float32 (B, H, W, C) images resampled at TF's projective transforms (B, 8) (affine: the last two are 0).

    Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2), integer pixel centres, as
    ImageProjectiveTransformV3 does; `cv2.warpAffine` with WARP_INVERSE_MAP takes exactly that matrix.
    """
    cv2 = opencv()
    images = np.ascontiguousarray(images, dtype=np.float32)
    out = np.empty_like(images)
    flags = (cv2.INTER_LINEAR if interpolation == "bilinear" else cv2.INTER_NEAREST) | cv2.WARP_INVERSE_MAP
    border = getattr(cv2, _BORDERS[fill_mode])
    height, width = images.shape[1:3]
    matrices = np.asarray(transforms, dtype=np.float64)[:, :6].reshape(-1, 2, 3)
    planes = _planes(images.shape[-1])

    def one(i):
        if len(planes) == 1 and images.shape[-1] in (1, 3, 4):  # written in place: no copy of the warped image
            whole = (lambda a: a[..., 0]) if images.shape[-1] == 1 else (lambda a: a)
            cv2.warpAffine(whole(images[i]), matrices[i], (width, height), dst=whole(out[i]), flags=flags,
                           borderMode=border, borderValue=fill_value)
            return
        for where in planes:
            plane = images[i, ..., where]
            warped = cv2.warpAffine(plane[..., 0] if plane.shape[-1] == 1 else plane, matrices[i], (width, height),
                                    flags=flags, borderMode=border, borderValue=fill_value)
            out[i, ..., where] = warped.reshape(height, width, -1)

    _each(one, len(images))
    return out


def repeat_grey(images: np.ndarray, channels: int = 3) -> np.ndarray:
    """float32 (..., H, W, 1) grey -> (..., H, W, `channels`), every channel the grey plane: `cv2.merge` per plane,
    bit for bit `np.repeat`. On batches of 32 x 224 px: 0.8 ms of core time against 8.7 for `tf.repeat` alone;
    0.11 against 0.17 ms an image inside a tf.data map, its `numpy_function` hand-off included (`bench.augment`)."""
    cv2 = opencv()
    images = np.ascontiguousarray(images, dtype=np.float32)
    planes = images.reshape(-1, *images.shape[-3:-1])
    out = np.empty((*images.shape[:-1], channels), np.float32)
    flat = out.reshape(-1, *out.shape[-3:])
    for i, plane in enumerate(planes):
        cv2.merge([plane] * channels, dst=flat[i])
    return out


def clahe(images: np.ndarray, clip_limit: float = 4.0, grid: tuple = (8, 8)) -> np.ndarray:
    """Keras' `ContrastLimitedAdaptiveHistogramEqualization` (value range 0-255, channels last) in numpy: the same
    tiles (padded symmetrically), histograms of the truncated values, clip and even redistribution, CDF stretched
    from its minimum, and the four tiles' maps blended bilinearly; equal to the layer's float32 output (tested).
    The layer counts its histograms with a one-hot of 256 per pixel: 217 ms a batch of 32 x 224 px here, against
    40-55 ms for `np.bincount` and four gathers (OpenCV's CLAHE is faster still, but another algorithm: up to 22
    grey levels off the layer, which the model's front would run)."""
    x = np.asarray(images, np.float32)
    b, h, w, c = x.shape
    gh, gw = grid
    th, tw = -(-h // gh), -(-w // gw)
    if th * gh != h or tw * gw != w:
        x = np.pad(x, ((0, 0), (0, th * gh - h), (0, tw * gw - w), (0, 0)), mode="symmetric")
    height, width = th * gh, tw * gw
    pixels = np.clip(x.astype(np.int32), 0, 255)
    tile = (((np.arange(b)[:, None, None, None] * gh + (np.arange(height) // th)[None, :, None, None]) * gw
             + (np.arange(width) // tw)[None, None, :, None]) * c + np.arange(c)[None, None, None, :])
    hists = np.bincount((tile * 256 + pixels).ravel(), minlength=b * gh * gw * c * 256)
    hists = hists.reshape(b, gh, gw, c, 256).astype(np.float32)
    if clip_limit > 0:
        clipped = np.clip(hists, 0, np.float32(clip_limit * (th * tw) / 256.0))
        hists = clipped + np.sum(hists - clipped, axis=-1, keepdims=True) / np.float32(256.0)
    cdf = np.cumsum(hists, axis=-1, dtype=np.float32)
    low = cdf.min(axis=-1, keepdims=True)
    spread = np.float32(th * tw) - low
    lut = np.clip((cdf - low) * np.float32(255.0) / np.where(spread == 0, np.float32(1.0), spread), 0, 255)
    flat = np.pad(lut, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)), mode="edge").ravel()  # border tiles repeated
    ys = (np.arange(height, dtype=np.float32) - np.float32(th / 2.0)) / np.float32(th) + np.float32(1.0)
    xs = (np.arange(width, dtype=np.float32) - np.float32(tw / 2.0)) / np.float32(tw) + np.float32(1.0)
    y0, x0 = np.floor(ys), np.floor(xs)
    wy, wx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    step_x = 256 * c
    step_y = step_x * (gw + 2)
    base = (np.arange(b, dtype=np.int32)[:, None, None, None] * step_y * (gh + 2)
            + np.arange(c, dtype=np.int32)[None, None, None, :] * 256 + pixels)
    rows = [(np.clip(v, 0, gh + 1).astype(np.int32) * step_y)[None, :, None, None] for v in (y0, y0 + 1)]
    cols = [(np.clip(v, 0, gw + 1).astype(np.int32) * step_x)[None, None, :, None] for v in (x0, x0 + 1)]
    top = flat[base + rows[0] + cols[0]] * (1 - wx) + flat[base + rows[0] + cols[1]] * wx
    bottom = flat[base + rows[1] + cols[0]] * (1 - wx) + flat[base + rows[1] + cols[1]] * wx
    return np.ascontiguousarray((top * (1 - wy) + bottom * wy)[:, :h, :w, :], dtype=np.float32)


def gaussian_blur(images: np.ndarray, sigma, apply, kernel_size=(3, 3)) -> np.ndarray:
    """float32 (B, H, W, C): the images `apply` (B,) picks blurred as Keras' `gaussian_blur` blurs them (one
    separable Gaussian of `kernel_size` and `sigma` (x, y), zeros beyond the border as TF's SAME convolution), the
    rest as given. `cv2.sepFilter2D` per image: a tenth of the layer's depthwise convolution over the whole batch."""
    cv2 = opencv()
    images = np.ascontiguousarray(images, dtype=np.float32)
    out = images.copy()

    def taps(size, s):
        x = np.arange(size, dtype=np.float32) - np.float32((size - 1) / 2)
        k = np.exp(np.float32(-0.5) * (x / np.float32(s)) ** 2)
        return (k / k.sum()).astype(np.float32)

    kx, ky = taps(kernel_size[0], sigma[0]), taps(kernel_size[1], sigma[1])
    planes = _planes(images.shape[-1])

    def one(i):
        if not apply[i]:
            return
        for where in planes:
            plane = np.ascontiguousarray(images[i, ..., where])
            blurred = cv2.sepFilter2D(plane[..., 0] if plane.shape[-1] == 1 else plane, -1, kx, ky,
                                      borderType=cv2.BORDER_CONSTANT)
            out[i, ..., where] = blurred.reshape(plane.shape)

    _each(one, len(images))
    return out
