"""Sampling n responses per prompt with one prefill per prompt: the RS-GRPO rollout's hot path on CPU.

`generate(num_return_sequences=n)` copies every prompt n times before its prefill, so the vision tower and the
prompt's forward run n times, and each decoding step of a tiny model costs mostly Python: transformers' per-step
bookkeeping (logits processors, mask building, cache objects), not arithmetic. Here:

1. the prompts (left-padded) go through the model once: vision tower, prefill, `get_rope_index` positions;
2. each prompt's KV cache is copied into n rows of preallocated key/value buffers;
3. every step runs the text decoder on one token per running row (`LeanDecoder`: the model's own modules and
   weights, only the attention's cache handling is written out), samples the next tokens, and rows that emitted
   end-of-turn leave the batch.

The next-token distribution is `generate`'s: suppressed ids removed, then temperature, then top-p (`top_p_filter`
is transformers' `TopPLogitsWarper`), no top-k; a token is drawn as argmax(p / E) with E = -log U ~ Exp(1) per
token, which picks token i with probability p_i (what `torch.multinomial` does, at a third of its cost on CPU). Greedy
decoding (temperature 0) gives `generate`'s greedy tokens (tests/integration/test_decoding.py); sampled tokens follow a
different random stream than `generate`'s, so the same seed gives other (equally distributed) samples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
_logged_paths: set[str] = set()  # decoding paths already announced at INFO (then DEBUG on every call)


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits (b, V) with every token outside the nucleus set to -inf, as transformers' `TopPLogitsWarper` does:
    sort ascending, drop the tokens whose cumulative probability is ≤ 1 - top_p, always keep the most probable."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return logits.masked_fill(remove, -float("inf"))


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float, suppressed: torch.Tensor) -> torch.Tensor:
    """(b,) the next token of each row from float logits (b, V): suppressed ids never, then temperature and top-p as
    `generate` applies them; temperature 0 is greedy (argmax)."""
    if len(suppressed):
        logits = logits.index_fill(1, suppressed, -float("inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = top_p_filter(logits / temperature, top_p).softmax(dim=-1)
    exponential = -torch.rand_like(probs).log()  # E ~ Exp(1) as -log U: 3× cheaper than exponential_ on CPU
    return (probs / exponential).argmax(dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanDecoder:
    """One-token decoding steps of a Qwen2.5-VL text decoder, on the model's own modules and weights.

    Norms, MLPs, rotary embedding, embedding and LM head are the model's modules, called as they are; the attention
    is written out (q/k/v projections, RoPE, scaled-dot-product attention, o projection) so that keys and values go
    to preallocated buffers instead of a cache object. Supports the architectures whose attention this matches
    (`supported`); anything else decodes through the model's forward.
    """

    def __init__(self, model: Any):
        self.text = model.model.language_model
        self.lm_head = model.lm_head
        attention = self.text.layers[0].self_attn
        self.heads, self.kv_heads = attention.num_heads, attention.num_key_value_heads
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        # q/k/v and gate/up as one matrix each: one matmul instead of three (two) per layer and step. Built from the
        # weights as they are now, so a decoder serves one rollout batch (the weights change at the next update).
        self.fused = [_fused_weights(layer) for layer in self.text.layers]
        self._cos = self._sin = None  # (positions, d): the rotary module's cos/sin of text positions 0, 1, …

    def _rotary(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (b, 1, 1, d) of text-token positions (b,): all three RoPE axes equal, looked up in a table the
        model's rotary module fills once (one call instead of one per step)."""
        needed = int(positions.max()) + 1
        if self._cos is None or len(self._cos) < needed:
            table = torch.arange(needed + 256, device=positions.device).view(1, 1, -1).expand(3, 1, -1)
            cos, sin = self.text.rotary_emb(hidden, table)  # (1, P, d)
            self._cos, self._sin = cos[0], sin[0]
        return self._cos[positions][:, None, None], self._sin[positions][:, None, None]

    @staticmethod
    def supported(model: Any) -> bool:
        text = getattr(getattr(model, "model", None), "language_model", None)
        if text is None or getattr(model, "lm_head", None) is None or not hasattr(text, "rotary_emb"):
            return False
        config = text.config
        layer = text.layers[0] if len(text.layers) else None
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        return (
            attention is not None
            and mlp is not None
            and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
            and not getattr(config, "use_sliding_window", False)
            and all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"))
            and all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))
            and mlp.gate_proj.bias is None
            and mlp.up_proj.bias is None
        )

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, buffers: KVBuffers) -> torch.Tensor:
        """Logits (b, V) after feeding tokens (b,) at positions (b,); appends their keys/values to `buffers`."""
        hidden = self.text.embed_tokens(tokens[:, None])  # (b, 1, H)
        cos, sin = self._rotary(hidden, positions)  # (b, 1, 1, d)
        for index, (layer, fused) in enumerate(zip(self.text.layers, self.fused, strict=True)):
            attention_input = layer.input_layernorm(hidden)
            hidden = hidden + self._attention(layer.self_attn, fused, attention_input, (cos, sin), buffers, index)
            gate, up = F.linear(layer.post_attention_layernorm(hidden), fused.gate_up).chunk(2, dim=-1)
            hidden = hidden + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        buffers.length += 1
        return self.lm_head(self.text.norm(hidden)[:, -1]).float()

    def _attention(
        self,
        attn: Any,
        fused: _Fused,
        hidden: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        buffers: KVBuffers,
        index: int,
    ) -> torch.Tensor:
        batch, (cos, sin) = hidden.shape[0], rotary
        widths = [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]
        query, key, value = F.linear(hidden, fused.qkv, fused.qkv_bias).split(widths, dim=-1)
        query = query.view(batch, 1, self.heads, self.head_dim).transpose(1, 2)  # (b, h, 1, d)
        key = key.view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)  # (b, kv, 1, d)
        value = value.view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        keys, values = buffers.append(index, key, value)  # (b, kv, L + 1, d)
        output = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=buffers.mask(), scale=self.scaling, enable_gqa=self.heads != self.kv_heads
        )  # (b, h, 1, d)
        return attn.o_proj(output.transpose(1, 2).reshape(batch, 1, -1))


@dataclass(frozen=True)
class _Fused:
    qkv: torch.Tensor  # (q width + 2 kv widths, H)
    qkv_bias: torch.Tensor | None
    gate_up: torch.Tensor  # (2 · intermediate, H)


@torch.no_grad()
def _fused_weights(layer: Any) -> _Fused:
    attn, mlp = layer.self_attn, layer.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    bias = None
    if any(p.bias is not None for p in projections):
        bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in projections])
    return _Fused(
        qkv=torch.cat([p.weight for p in projections]),
        qkv_bias=bias,
        gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
    )


class KVBuffers:
    """Per-layer keys and values (rows, kv_heads, capacity, d) with the attention mask (rows, capacity) of the
    positions filled so far: the prompt's (left padding masked) and one per decoded token."""

    def __init__(self, cache: Any, attention_mask: torch.Tensor, repeats: int, extra: int):
        layers = cache.layers
        width = attention_mask.shape[1]
        self.keys, self.values = [], []
        for layer in layers:
            for source, target in ((layer.keys, self.keys), (layer.values, self.values)):
                rows, heads, _, dim = source.shape
                buffer = source.new_zeros((rows * repeats, heads, width + extra, dim))
                buffer[:, :, :width] = source.repeat_interleave(repeats, dim=0)
                target.append(buffer)
        self.valid = torch.zeros((len(self.keys[0]), width + extra), dtype=torch.bool, device=attention_mask.device)
        self.valid[:, :width] = attention_mask.repeat_interleave(repeats, dim=0).bool()
        self.length = width

    def append(self, index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + 1
        self.keys[index][:, :, self.length] = key[:, :, 0]
        self.values[index][:, :, self.length] = value[:, :, 0]
        if index == 0:
            self.valid[:, self.length] = True
        return self.keys[index][:, :, :end], self.values[index][:, :, :end]

    def mask(self) -> torch.Tensor:
        return self.valid[:, None, None, : self.length + 1]  # (b, 1, 1, L + 1): True = attend

    def select(self, rows: torch.Tensor) -> None:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.valid = self.valid.index_select(0, rows)


@torch.no_grad()
def sample_shared_prefix(
    model: Any,
    batch: dict[str, Any],
    sampling: Sampling,
    suppressed: Sequence[int],
    end_ids: set[int],
    pad_id: int,
) -> torch.Tensor:
    """(P·n, T') sampled ids for a left-padded prompt batch (rollout.collate_prompts), prompt p's n samples adjacent,
    rows that ended padded with `pad_id` after their end-of-turn token: what `generate(num_return_sequences=n)`
    returns (module docstring). Positions follow Qwen2.5-VL's multimodal RoPE: the prompt's from `get_rope_index`,
    then one more per generated token, as the update's forward over prompt ⧺ response computes them."""
    n = sampling.n
    positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )  # (3, P, S)
    out = model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)  # (B, V), B = P·n
    next_position = positions[0, :, -1].repeat_interleave(n) + 1  # (B,) text tokens: all three axes equal
    step_fn = _decoding_steps(model, out.cache, batch["attention_mask"], n, sampling.max_new_tokens)
    device = logits.device
    suppressed_ids = torch.tensor(list(suppressed), dtype=torch.long, device=device)
    end = torch.tensor(sorted(end_ids), dtype=torch.long, device=device)
    rows = torch.arange(len(logits), device=device)  # the output row of each decoding row
    generated = torch.full((len(logits), sampling.max_new_tokens), pad_id, dtype=torch.long, device=device)
    for step in range(sampling.max_new_tokens):
        tokens = next_tokens(logits, sampling.temperature, sampling.top_p, suppressed_ids)  # (b,)
        generated[rows, step] = tokens
        running = ~torch.isin(tokens, end)
        if step == sampling.max_new_tokens - 1 or not bool(running.any()):
            return generated[:, : step + 1]
        if not bool(running.all()):
            keep = running.nonzero().squeeze(1)
            rows, tokens, next_position = rows[keep], tokens[keep], next_position[keep]
            step_fn.select(keep)
        logits = step_fn(tokens, next_position)
        next_position = next_position + 1
    return generated


class _ModelSteps:
    """Decoding steps through the model's own forward and cache (architectures LeanDecoder does not cover)."""

    def __init__(self, model: Any, cache: Any, attention_mask: torch.Tensor, repeats: int):
        self.model, self.cache = model, cache
        cache.batch_repeat_interleave(repeats)
        self.attention_mask = attention_mask.repeat_interleave(repeats, dim=0)

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.attention_mask = self.attention_mask[rows]

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ones = self.attention_mask.new_ones((len(tokens), 1))
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attention_mask,
            position_ids=positions.view(1, -1, 1).expand(3, -1, 1),
            cache=self.cache,
            use_cache=True,
        )
        return out.logits[:, -1].float()


class _LeanSteps:
    def __init__(self, model: Any, cache: Any, attention_mask: torch.Tensor, repeats: int, extra: int):
        self.decoder = LeanDecoder(model)
        self.buffers = KVBuffers(cache, attention_mask, repeats, extra)

    def select(self, rows: torch.Tensor) -> None:
        self.buffers.select(rows)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.decoder.step(tokens, positions, self.buffers)


def _decoding_steps(model: Any, cache: Any, attention_mask: torch.Tensor, repeats: int, extra: int) -> Any:
    if LeanDecoder.supported(model) and hasattr(cache, "layers"):
        _log_path("lean", "LeanDecoder over preallocated KV buffers")
        return _LeanSteps(model, cache, attention_mask, repeats, extra)
    _log_path("model", f"the model's own forward and cache ({type(model).__name__} is not covered by LeanDecoder)")
    return _ModelSteps(model, cache, attention_mask, repeats)


def _log_path(path: str, what: str) -> None:
    """Say which decoding path runs: at INFO the first time in this process, at DEBUG afterwards."""
    level = logging.DEBUG if path in _logged_paths else logging.INFO
    _logged_paths.add(path)
    log.log(level, "shared-prefix decoding steps: %s", what)
