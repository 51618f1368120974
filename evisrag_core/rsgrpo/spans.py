"""Reward scoping (spec §5): the token span of the response that each reward component owns.

RS-GRPO gives the advantage of component j only to the tokens that component judges:

    accuracy   [<think>, end)          evidence   [start, <think>)
    format     [start, end)            overlong   [start, end)
    is_observe [start, <evidence>)     is_think   [<think>, <answer>)

A boundary is the position of the *first* occurrence of the tag's token ids in the response ids; the start
boundary is included, the end boundary excluded (so the `<think>` tag tokens belong to accuracy and is_think, not
to evidence). A start tag that does not occur means "from the start", an end tag that does not occur means "to the
end". Padding (response_mask = 0) is never in a span and is not searched.

Tokenisation context. As in the reference, a tag's ids are `tokenizer.encode(tag, add_special_tokens=False)` of the
bare tag, with nothing before or after it. A byte-level BPE cuts text into pre-tokens first, and the characters
around a tag can join its "<" or ">" into another pre-token; when the vocabulary has merged that pre-token's bytes
(a large vocabulary usually has), the bare ids do not occur in the response and the boundary silently falls back to
start/end. Measured on a trained BPE in tests/unit/test_spans.py:
  - any split: a space before the tag (" <think>"), punctuation before it ("</evidence><think>") or punctuation
    after it ("<evidence>[1]: …" gives ">[");
  - Qwen2's split only: a newline after the tag ("<think>\n" gives ">\n") or a letter after it ("<think>Image" gives
    ">Image"). Qwen2's split keeps "<think" itself intact whatever precedes it, except a space or punctuation.
The search runs on the generated ids, which need not be the canonical encoding of the decoded text either.

`released_span_masks` (`rsgrpo.span_masks: released`) gives the masks of the reference before its commit 6d43409, with
which the released checkpoints were trained: accuracy and is_think keep their spans only in the first row of each
reward call (a round of sampling, `step.collect_groups`), and end-tag spans are also cut at `<answer>` in every row
but a call's last. Its tag search runs over a row's valid tokens, the reference's over the padded row (padding ids
form no tag, so the masks agree).

`char_offset_span_masks` (`rsgrpo.span_locator: char_offsets`, not the reference's behaviour) finds the same
boundaries where the token-id search misses them: it decodes the response, takes the first occurrence of each tag
in the *text*, and maps that character to the token holding it through the tokenizer's offset mapping. A token that
straddles a boundary (">[", "><") goes to the span that starts there. Where the token-id search finds a tag, both
locators give the same boundary.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any, Protocol

import torch

from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS

THINK, EVIDENCE, ANSWER = "<think>", "<evidence>", "<answer>"

# component → (start tag or None for "from the start", end tag or None for "to the end")
SPAN_TAGS: dict[str, tuple[str | None, str | None]] = {
    "accuracy": (THINK, None),
    "evidence": (None, THINK),
    "format": (None, None),
    "overlong": (None, None),
    "is_observe": (None, EVIDENCE),
    "is_think": (THINK, ANSWER),
}


class Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def find_subsequence(ids: list[int], pattern: list[int]) -> int | None:
    """Index of the first occurrence of `pattern` in `ids`, or None. An empty pattern is an error, not a match."""
    if not pattern:
        raise ValueError("find_subsequence: the pattern is empty; a tag must encode to at least one token id")
    first, width = pattern[0], len(pattern)
    for i in range(len(ids) - width + 1):
        if ids[i] == first and ids[i : i + width] == pattern:
            return i
    return None


def tag_token_ids(tokenizer: Encoder) -> dict[str, list[int]]:
    """The token ids of every tag that bounds a span, each encoded alone without special tokens (as the reference)."""
    tags = sorted({tag for bounds in SPAN_TAGS.values() for tag in bounds if tag is not None})
    tag_ids = {tag: list(tokenizer.encode(tag, add_special_tokens=False)) for tag in tags}
    empty = [tag for tag, ids in tag_ids.items() if not ids]
    if empty:
        raise ValueError(f"tag_token_ids: {empty} encode to no token ids with this tokenizer; spans cannot be found")
    return tag_ids


def span_bounds(ids: list[int], positions: list[int], seq_len: int, tag_ids: dict[str, list[int]]) -> list[list[int]]:
    """[start, end) of every component's span for one response whose valid token ids `ids` sit at `positions`."""
    boundary: dict[str, int] = {}
    for tag, pattern in tag_ids.items():
        index = find_subsequence(ids, pattern)
        if index is not None:
            boundary[tag] = positions[index]
    return bounds_from_boundaries(boundary, seq_len)


def bounds_from_boundaries(boundary: dict[str, int], seq_len: int) -> list[list[int]]:
    """[start, end) of every component's span from the column of each tag found (absent tags: start / end)."""
    bounds = []
    for name in REWARD_COMPONENTS:
        start_tag, end_tag = SPAN_TAGS[name]
        start = boundary.get(start_tag, 0) if start_tag else 0
        end = boundary.get(end_tag, seq_len) if end_tag else seq_len
        bounds.append([start, end])
    return bounds


def component_span_masks(
    response_ids: torch.Tensor, response_mask: torch.Tensor, tag_ids: dict[str, list[int]]
) -> torch.Tensor:
    """Span masks of all components, in `REWARD_COMPONENTS` order.

    response_ids, response_mask: (batch, seq); `tag_ids` from `tag_token_ids`. Returns bool (batch, n_components,
    seq): span_mask[i, j, t] is true when token t of response i is valid and start[i, j] ≤ t < end[i, j].
    """
    return masks_from_bounds(component_span_bounds(response_ids, response_mask, tag_ids), response_mask.bool())


def component_span_bounds(
    response_ids: torch.Tensor, response_mask: torch.Tensor, tag_ids: dict[str, list[int]]
) -> list[list[list[int]]]:
    """[start, end) of every component's span in every response: (batch, n_components, 2) as nested lists."""
    missing = {tag for bounds in SPAN_TAGS.values() for tag in bounds if tag is not None} - tag_ids.keys()
    if missing:
        raise KeyError(f"component_span_masks: tag_ids lacks {sorted(missing)}; build it with tag_token_ids()")
    valid = response_mask.bool()  # (batch, seq)
    seq_len = response_ids.shape[1]
    return [
        span_bounds(row_ids[row_valid].tolist(), row_valid.nonzero().flatten().tolist(), seq_len, tag_ids)
        for row_ids, row_valid in zip(response_ids, valid, strict=True)
    ]


def masks_from_bounds(bounds: list[list[list[int]]], valid: torch.Tensor) -> torch.Tensor:
    """(batch, n_components) [start, end) pairs and the (batch, seq) valid mask → bool (batch, n_components, seq)."""
    bounds_t = torch.tensor(bounds, dtype=torch.long, device=valid.device).view(-1, len(REWARD_COMPONENTS), 2)
    start, end = bounds_t[..., 0:1], bounds_t[..., 1:2]  # (batch, n_components, 1)
    t = torch.arange(valid.shape[1], device=valid.device)  # (seq,)
    return (t >= start) & (t < end) & valid.unsqueeze(1)  # (batch, n_components, seq)


# --- the released checkpoints' masks (rsgrpo.span_masks: released) ---------------------------------------------------

# The last component (in REWARD_COMPONENTS order) with a start tag and the last with an end tag: their boundaries are
# what the reference's shared index arrays hold for a row once that row has been processed.
_LAST_START = max(j for j, name in enumerate(REWARD_COMPONENTS) if SPAN_TAGS[name][0] is not None)
_LAST_END = max(j for j, name in enumerate(REWARD_COMPONENTS) if SPAN_TAGS[name][1] is not None)


def released_span_masks(
    bounds: list[list[list[int]]], valid: torch.Tensor, first_of_call: list[bool], last_of_call: list[bool]
) -> torch.Tensor:
    """The span masks of the reference's reward function before its commit 6d43409 (the released checkpoints').

    bounds (batch, n_components, 2) from `component_span_bounds`; valid (batch, seq); first_of_call / last_of_call:
    whether each row was the first / last row of the reward call that scored it. Returns bool (batch, n_comp, seq).

    That function kept one start index and one end index per row, shared by the components, initialised to "past
    the end" (seq_len), and while processing row i set row i's index for component j and multiplied the masks of
    *all* rows of the call by `t >= start[row]` (a start tag) and `t < end[row]` (an end tag). For row r of a call
    of rows 0..N-1, component j's mask is therefore the product over i = 0..N-1 of what row r's index was then:

        i < r   seq_len              start: `t >= seq_len` empties the mask   end: `t < seq_len` keeps it
        i = r   j's own boundary     the fixed mask of spec §5
        i > r   the row's index after its last component: is_think's (<think> for starts, <answer> for ends)

    so a start-tag component (accuracy, is_think) keeps its span in row 0 of the call only (there `t >= <think>`
    again, a no-op), and in every row but the last, an end-tag component (evidence, is_observe, is_think) is also cut
    at the row's `<answer>`: a no-op unless `<answer>` comes before the component's own end tag.
    """
    if not len(bounds) == len(first_of_call) == len(last_of_call) == valid.shape[0]:
        raise ValueError("released_span_masks: bounds, first_of_call, last_of_call and valid need one entry per row")
    seq_len = valid.shape[1]
    cut = []
    for row, (first, last) in enumerate(zip(first_of_call, last_of_call, strict=True)):
        row_bounds = []
        for j, name in enumerate(REWARD_COMPONENTS):
            start_tag, end_tag = SPAN_TAGS[name]
            start, end = bounds[row][j]
            if start_tag is not None:
                start = start if first else seq_len
                start = start if last else max(start, bounds[row][_LAST_START][0])
            if end_tag is not None and not last:
                end = min(end, bounds[row][_LAST_END][1])
            row_bounds.append([start, end])
        cut.append(row_bounds)
    return masks_from_bounds(cut, valid)


def row_edges(group_edges: list[tuple[bool, bool]], n: int) -> tuple[list[bool], list[bool]]:
    """first_of_call, last_of_call per response row from each group's (first group of its reward call, last group of
    its reward call), n responses per group: a call's first row is its first group's first response."""
    first = [edge[0] and k == 0 for edge in group_edges for k in range(n)]
    last = [edge[1] and k == n - 1 for edge in group_edges for k in range(n)]
    return first, last


# --- the char_offsets locator -------------------------------------------------------------------------------------

SpanLocator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (response_ids, response_mask) → span masks


def token_char_starts(ids: list[int], tokenizer: Any) -> tuple[str, list[int]]:
    """The decoded text of `ids` (special tokens kept, so every token has characters) and the character where each
    token starts in it.

    The offsets come from the fast tokenizer's offset mapping of the decoded text when re-encoding it gives `ids`
    back (the usual case). Sampled ids need not be the canonical encoding of their text; then each token's start is
    the length of the decoded prefix before it (exact for any ids, but one decode per token)."""
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) == list(ids):
        return text, [start for start, _ in encoded["offset_mapping"]]
    starts = [
        len(tokenizer.decode(ids[:t], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        for t in range(len(ids))
    ]
    return text, starts


def char_offset_boundaries(ids: list[int], positions: list[int], tokenizer: Any) -> dict[str, int]:
    """Column of the token holding the first character of each tag's first occurrence in the decoded text."""
    text, starts = token_char_starts(ids, tokenizer)
    boundary: dict[str, int] = {}
    for tag in sorted({tag for bounds in SPAN_TAGS.values() for tag in bounds if tag is not None}):
        char = text.find(tag)
        if char >= 0:
            boundary[tag] = positions[bisect_right(starts, char) - 1]  # the last token starting at or before it
    return boundary


def char_offset_span_masks(response_ids: torch.Tensor, response_mask: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """Like `component_span_masks`, with the tags located in the decoded text (module docstring). The tokenizer
    must be a fast one (`return_offsets_mapping`)."""
    valid = response_mask.bool()  # (batch, seq)
    seq_len = response_ids.shape[1]
    bounds = []
    for row_ids, row_valid in zip(response_ids, valid, strict=True):
        ids, positions = row_ids[row_valid].tolist(), row_valid.nonzero().flatten().tolist()
        boundary = char_offset_boundaries(ids, positions, tokenizer) if ids else {}
        bounds.append(bounds_from_boundaries(boundary, seq_len))
    return masks_from_bounds(bounds, valid)


def span_locator(name: str, tokenizer: Any) -> SpanLocator:
    """`rsgrpo.span_locator` → a function (response_ids, response_mask) → (batch, n_components, seq) span masks."""
    if name == "token_ids":
        tag_ids = tag_token_ids(tokenizer)
        return lambda ids, mask: component_span_masks(ids, mask, tag_ids)
    if name == "char_offsets":
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("rsgrpo.span_locator 'char_offsets' needs a fast tokenizer (offset mapping)")
        return lambda ids, mask: char_offset_span_masks(ids, mask, tokenizer)
    raise ValueError(f"unknown span locator {name!r}; use 'token_ids' or 'char_offsets'")


def whole_response_masks(response_mask: torch.Tensor) -> torch.Tensor:
    """Plain GRPO: one component (`overall`) owning every valid token. (batch, seq) → bool (batch, 1, seq)."""
    return response_mask.bool().unsqueeze(1)
