"""Opening images: the one place the pipeline reads an image file (prediction, rollouts, SFT, dataset checks).

`load_image(path, min_pixels, max_pixels)` refuses what must not be decoded, and returns exactly the RGB image
`qwen_vl_utils.fetch_image` would hand the processor for a path, so routing images through it changes no pixel:

1. the size in the file header is checked before any pixel is decoded: above `MAX_SOURCE_PIXELS` (Pillow's own
   decompression-bomb limit) the file is refused, so a small file claiming a huge canvas costs nothing;
2. the pixels are decoded in full (a truncated file fails here, with the file named, not deep inside a batch);
3. any mode becomes RGB (grayscale, CMYK, palette); transparent pixels become white, as `fetch_image` does for RGBA;
4. with pixel limits, the image is resized to `qwen_vl_utils.smart_resize`'s size (sides multiples of 28, area in
   [min_pixels, max_pixels]), the processor's own budget, with the same resampling.

`vision_inputs(messages)` replaces `qwen_vl_utils.process_vision_info(messages)[0]` for our chat messages: every
image entry goes through `load_image`, then to the processor as a PIL image.
"""

from __future__ import annotations

import base64
import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

from PIL import Image

from evisrag_core.io import BadRecordError

# Pillow's decompression-bomb limit (it warns above it, and only raises above twice it); ~9,500 × 9,500 pixels,
# far above any page the processor is given (at most a few million pixels after resizing).
MAX_SOURCE_PIXELS = 89_478_485
PATCH_FACTOR = 28  # Qwen2.5-VL: 14-pixel patches merged 2×2, so resized sides are multiples of 28
MAX_ASPECT_RATIO = 200  # qwen_vl_utils.smart_resize refuses longer/shorter side ratios above this
DEFAULT_MIN_PIXELS = 4 * PATCH_FACTOR**2  # qwen_vl_utils' budget for an image entry without limits
DEFAULT_MAX_PIXELS = 16384 * PATCH_FACTOR**2


class ImageError(BadRecordError):
    """An image cannot be used (missing, not an image, damaged, too large); the message names the file."""


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _open(path: str | os.PathLike[str], where: str) -> Image.Image:
    """Open the file and read its header only; refuse a canvas larger than MAX_SOURCE_PIXELS before decoding."""
    try:
        with warnings.catch_warnings():
            # The size check below replaces Pillow's bomb warning (it would only warn between 1× and 2× its limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError as err:
        raise ImageError(f"{_prefix(where)}image {path} not found; re-run `evisrag download`") from err
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"{_prefix(where)}{path} claims more than {MAX_SOURCE_PIXELS:,} pixels ({err}); refused by the "
            "decompression-bomb guard; shrink the image before using it"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(
            f"{_prefix(where)}{path} is not a readable image ({err}); replace the file or drop the record"
        ) from err
    width, height = image.size
    if width * height > MAX_SOURCE_PIXELS:
        image.close()
        raise ImageError(
            f"{_prefix(where)}{path} is {width}×{height} pixels, above the {MAX_SOURCE_PIXELS:,}-pixel limit "
            "(decompression-bomb guard); shrink the image before using it"
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent pixels composited onto white (grayscale, CMYK and palette images convert directly)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def target_size(width: int, height: int, min_pixels: int, max_pixels: int, where: str = "") -> tuple[int, int]:
    """(width, height) the processor budget allows: qwen_vl_utils.smart_resize, with its refusal made readable."""
    from qwen_vl_utils import smart_resize

    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"{_prefix(where)}image of {width}×{height} pixels is more than {MAX_ASPECT_RATIO} times longer than "
            "wide; crop it into pages before using it"
        )
    new_height, new_width = smart_resize(height, width, PATCH_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    return new_width, new_height


def fit_to_budget(image: Image.Image, min_pixels: int, max_pixels: int, where: str = "") -> Image.Image:
    """Resize to `target_size` with Pillow's default resampling, exactly as `qwen_vl_utils.fetch_image` does."""
    return image.resize(target_size(*image.size, min_pixels, max_pixels, where))


def load_image(
    path: str | os.PathLike[str],
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    where: str = "",
) -> Image.Image:
    """The decoded RGB image at `path`, resized to the processor's pixel budget when `max_pixels` is given.

    Raises ImageError (a BadRecordError) naming `where` (file:line or record) and the file for every problem.
    """
    with _open(path, where) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(
                f"{_prefix(where)}{path} does not decode ({err}); the file is damaged or truncated, replace it"
            ) from err
        rgb = to_rgb(image)
    if max_pixels is None:
        return rgb
    return fit_to_budget(rgb, min_pixels or DEFAULT_MIN_PIXELS, max_pixels, where)


def check_image(path: str | os.PathLike[str], where: str = "") -> None:
    """Raise ImageError unless `path` decodes as an image within the size guard (used when records are loaded)."""
    load_image(path, where=where).close()


def vision_inputs(messages: Sequence[dict[str, Any]]) -> list[Image.Image] | None:
    """The processed images of chat messages, in order (None when there are none), each through `load_image`.

    Image entries are `{"type": "image", "image": <path or PIL image>, "min_pixels": .., "max_pixels": ..}`, as
    `evisrag_core.prompts.build_messages` writes them.
    """
    images = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for entry in content:
            if entry.get("type") != "image" and "image" not in entry:
                continue
            source = entry["image"]
            # qwen_vl_utils' defaults when an entry carries no limits, so nothing changes for such callers either.
            limits = (entry.get("min_pixels") or DEFAULT_MIN_PIXELS, entry.get("max_pixels") or DEFAULT_MAX_PIXELS)
            if isinstance(source, Image.Image):
                images.append(fit_to_budget(to_rgb(source), *limits))
            else:
                images.append(load_image(source, *limits))
    return images or None


def thumbnail_data_url(path: str | os.PathLike[str], size: tuple[int, int]) -> str:
    """A base64 PNG data URL of the image in RGB, shrunk to fit `size` (aspect ratio kept): the reports embed these
    so that an HTML page is self-contained."""
    with Image.open(path) as image:
        small = image.convert("RGB")
    small.thumbnail(size)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
