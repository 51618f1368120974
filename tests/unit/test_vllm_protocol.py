"""The pure parts of the vLLM engine process channel (no engine: tests/vllm has those)."""

from __future__ import annotations

from PIL import Image

from evisrag_core.rsgrpo.vllm_rollout import collapse_image_pads
from evisrag_core.vllm_engine.protocol import pack_image, unpack_image

PAD = 9


def test_images_cross_as_the_same_rgb_pixels() -> None:
    image = Image.new("RGB", (28, 56))
    image.putpixel((3, 50), (255, 10, 0))
    back = unpack_image(pack_image(image))
    assert back.size == (28, 56) and back.mode == "RGB"
    assert list(back.getdata()) == list(image.getdata())


def test_a_grayscale_image_is_sent_as_rgb() -> None:
    assert unpack_image(pack_image(Image.new("L", (4, 4), 7))).getpixel((0, 0)) == (7, 7, 7)


def test_each_run_of_image_pads_becomes_one_pad_per_image() -> None:
    # two images: vLLM expands each single pad back to the image's token count
    ids = [1, 2, PAD, PAD, PAD, 3, 2, PAD, PAD, 3, 4]
    assert collapse_image_pads(ids, PAD) == [1, 2, PAD, 3, 2, PAD, 3, 4]
    assert collapse_image_pads([1, 2, 3], PAD) == [1, 2, 3]
