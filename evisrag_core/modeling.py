"""Model loading, and the tiny Qwen2.5-VL the embedded default trains and predicts with.

The tiny model has the real architecture (`Qwen2_5_VLForConditionalGeneration`: a ViT with 2×2 patch merging feeding
a Qwen2 decoder with multimodal RoPE) at toy sizes, built from a config with random weights. Its tokenizer is a
byte-level BPE trained here with `tokenizers` on the prompt templates and the training text, plus the Qwen special
tokens (`<|im_start|>`, `<|im_end|>`, `<|vision_start|>`, `<|image_pad|>`, ...), so the Qwen2-VL chat template and
the processor's image-token expansion work unchanged. Both are saved with `save_pretrained`, so the rest of the
pipeline loads them exactly as it loads `openbmb/EVisRAG-7B`: `load_model_and_processor(path_or_hub_id)`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from evisrag_core.config import TinyModelParams
from evisrag_core.errors import UserError
from evisrag_core.prompts import PROMPT_TEMPLATES

log = logging.getLogger(__name__)

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
SUPPORTED_ARCHITECTURES = ("Qwen2_5_VLForConditionalGeneration",)

# The Qwen2-VL chat template, restated: a default system turn, then each message; an image entry becomes
# <|vision_start|><|image_pad|><|vision_end|>, which the processor expands to one pad token per merged patch.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelLoadError(UserError, RuntimeError):
    """A model folder or hub id cannot be used; the message says why and what to do."""


def prompt_line_tokens() -> list[str]:
    """The fixed lines of every evidence prompt template (up to the question), each to become one token."""
    lines: list[str] = []
    for template in PROMPT_TEMPLATES.values():
        for line in template.split("{query}")[0].splitlines(keepends=True):
            if line.strip() and line not in lines:
                lines.append(line)
    return lines


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes) with the Qwen special tokens at ids 0..7, and one token per fixed line of
    the evidence prompt.

    The prompt is 425 BPE tokens of fixed instructions with the question at its end. A 2-layer model trained on
    it described the images right but never learnt to copy the question's colour out of that haystack (teacher-forced
    accuracy at chance after 900 steps); with each instruction line as one token the prompt is about 40 tokens, the
    question stands out, and every sequence is 2.5 times shorter. The text is unchanged: the tokens decode to it.
    Hub models keep their own tokenizers; this concerns the tiny model only.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    bpe.add_tokens([AddedToken(line, normalized=False, special=False) for line in prompt_line_tokens()])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
    )


def tokenizer_corpus(texts: Iterable[str]) -> Iterable[str]:
    """Prompt templates and chat scaffolding first, then the caller's texts (e.g. the SFT conversations)."""
    yield from PROMPT_TEMPLATES.values()
    yield "system\nYou are a helpful assistant.\nuser\nassistant\n"
    yield from texts


def build_processor(tokenizer: PreTrainedTokenizerFast, min_pixels: int, max_pixels: int) -> Qwen2_5_VLProcessor:
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(sizes: TinyModelParams, tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    head_dim = sizes.hidden_size // sizes.num_attention_heads
    # Multimodal RoPE splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": sizes.hidden_size,
            "intermediate_size": sizes.intermediate_size,
            "num_hidden_layers": sizes.num_hidden_layers,
            "num_attention_heads": sizes.num_attention_heads,
            "num_key_value_heads": sizes.num_key_value_heads,
            "max_position_embeddings": 8192,
            "rope_parameters": {"rope_theta": sizes.rope_theta, "rope_type": "default", "mrope_section": mrope_section},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": sizes.vision_depth,
            "hidden_size": sizes.vision_hidden_size,
            "intermediate_size": 2 * sizes.vision_hidden_size,
            "num_heads": sizes.vision_num_heads,
            "out_hidden_size": sizes.hidden_size,
            "fullatt_block_indexes": [sizes.vision_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        architectures=list(SUPPORTED_ARCHITECTURES),
    )


def build_tiny_model(
    out_dir: str | Path,
    sizes: TinyModelParams,
    texts: Iterable[str],
    seed: int,
    min_pixels: int,
    max_pixels: int,
) -> Path:
    """Train the tokenizer, build the model with seeded random weights, save both to `out_dir`."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(tokenizer_corpus(texts), sizes.vocab_size)
    processor = build_processor(tokenizer, min_pixels, max_pixels)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(sizes, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    log.info("tiny model with %d parameters saved to %s", sum(p.numel() for p in model.parameters()), out)
    return out


def _check_architecture(name_or_path: str, trust_remote_code: bool, revision: str | None) -> None:
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    architectures = tuple(getattr(config, "architectures", None) or ())
    if not set(architectures) & set(SUPPORTED_ARCHITECTURES):
        raise ModelLoadError(
            f"{name_or_path}: architecture {architectures or config.model_type!r} is not supported; this pipeline "
            f"trains and predicts with {SUPPORTED_ARCHITECTURES[0]} (Qwen2.5-VL, EVisRAG-7B/3B). Point the "
            "model path at such a checkpoint."
        )


def require_local_model_dir(path: str | Path, produced_by: str) -> Path:
    """A stage input that must be a local folder: fail at once instead of trying it as a hub id."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder} is not a model folder (no config.json); run `{produced_by}` (or `dvc repro`) first"
        )
    return folder


def verify_model_dir(path: str | Path, trust_remote_code: bool = False) -> None:
    """A folder is usable when its config names a supported architecture and its processor loads."""
    _check_architecture(str(path), trust_remote_code, None)
    AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def _require_all_weights(name: str, loading: dict[str, Any]) -> None:
    """from_pretrained fills weights the checkpoint lacks with random values and only warns: a checkpoint of
    another architecture (other parameter names) would load as an untrained model. Refuse that."""
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        unexpected = sorted(loading.get("unexpected_keys") or ())
        raise ModelLoadError(
            f"{name}: the weights do not belong to this architecture: {len(missing)} parameters missing "
            f"(e.g. {missing[0]!r}), {len(unexpected)} unexpected (e.g. {unexpected[:1]}). The folder's config says "
            f"{SUPPORTED_ARCHITECTURES[0]} but the checkpoint is another model; point the model path at a matching "
            "checkpoint."
        )


def load_model_and_processor(
    name_or_path: str | Path,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    dtype: torch.dtype | str = "auto",
    device: str | None = None,
    padding_side: str = "left",
) -> tuple[Qwen2_5_VLForConditionalGeneration, Any]:
    """Load a Qwen2.5-VL model and its processor from a local folder or a hub id (e.g. `openbmb/EVisRAG-7B`).

    Weights load from safetensors only. `trust_remote_code` stays off unless the caller turns it on.
    """
    name = str(name_or_path)
    if trust_remote_code:
        message = f"trust_remote_code is on: code shipped with {name} will run on this machine"
        log.warning(message)
        warnings.warn(message, stacklevel=2)
    try:
        _check_architecture(name, trust_remote_code, revision)
        model, loading = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            name,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            revision=revision,
            output_loading_info=True,
        )
        processor = AutoProcessor.from_pretrained(
            name, trust_remote_code=trust_remote_code, revision=revision, padding_side=padding_side
        )
    except ModelLoadError:
        raise
    except RuntimeError as err:
        # from_pretrained raises RuntimeError when weight shapes do not fit the config (another model size).
        raise ModelLoadError(
            f"cannot load a model from {name!r}: the weight shapes do not match its config.json (a checkpoint of "
            "another model size, or files of two models mixed); use the config.json saved with these weights"
        ) from err
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load a model from {name!r}: {err}. Use a local folder written by `evisrag download` or "
            "`save_pretrained`, or a hub id on a machine that can reach the hub."
        ) from err
    _require_all_weights(name, loading)
    if device:
        model.to(device)
    model.eval()
    return model, processor


def download_model(name_or_path: str, out_dir: str | Path, revision: str | None = None) -> Path:
    """Copy a hub model (safetensors, configs, tokenizer and processor files) into `out_dir`."""
    from huggingface_hub import snapshot_download

    allow = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]
    path = snapshot_download(repo_id=name_or_path, revision=revision, local_dir=str(out_dir), allow_patterns=allow)
    return Path(path)


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Freeze the ViT and its patch merger (the reference trains only the language model); returns #frozen."""
    visual = model.model.visual if hasattr(model, "model") and hasattr(model.model, "visual") else model.visual
    frozen = 0
    for parameter in visual.parameters():
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen


def use_bf16(setting: str) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
