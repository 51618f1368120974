"""Reward scopes of spec §5 on real byte-level BPE output and on hand-built id lists."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS
from evisrag_core.rsgrpo.spans import (
    SPAN_TAGS,
    char_offset_span_masks,
    component_span_bounds,
    component_span_masks,
    find_subsequence,
    released_span_masks,
    row_edges,
    span_locator,
    tag_token_ids,
    whole_response_masks,
)

EOS, PAD = "<|im_end|>", "<|endoftext|>"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def tagged(observe: str, evidence: str, think: str, answer: str, sep: str = "\n") -> str:
    return (
        f"<observe>{observe}</observe>{sep}<evidence>{evidence}</evidence>{sep}"
        f"<think>{think}</think>{sep}<answer>{answer}</answer>"
    )


# Block contents start with a space or a digit: then every tag is its own pre-token in both pre-tokenizer styles.
RESPONSES = [
    tagged(
        " The first image shows a red square on a blue background.",
        " [1]: no relevant information [2]: the square is green",
        " Image [2] matches the question. So the answer is green.",
        " green",
    ),
    tagged(
        " Two charts and a table.", " [1]: revenue grew 11% [2]: no relevant information", " Chart [1]: 11%.", "11%"
    ),
    tagged(" Nothing about Paris.", " [1]: no relevant information", " No image answers.", " insufficient to answer"),
]
# Tags glued to their context, as a model may write them: (text, tag, found with GPT-2's split, found with Qwen2's
# split). Each text is in the training corpus, so the vocabulary learns the merged tokens a real vocabulary has.
# A tag that is not found falls back to "from the start" / "to the end".
GLUED_CASES = [
    ("a <think> b", "<think>", False, False),  # " <" is one pre-token in both
    ("x</evidence><think> y", "<think>", False, False),  # "><" is one pre-token in both
    ("ok\n<evidence>[1]: x", "<evidence>", False, False),  # ">[" is one pre-token in both
    ("ok\n<think>\nstep", "<think>", True, False),  # Qwen2's split keeps ">\n" together
    ("ok\n<think>Image [2]", "<think>", True, False),  # Qwen2's split reads ">Image" as one pre-token
]


@pytest.fixture(scope="module", params=["gpt2", "qwen2"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    """A ~500-token byte-level BPE trained on tagged responses, with GPT-2's or Qwen2's pre-tokenizer split."""
    bpe = Tokenizer(models.BPE())
    if request.param == "gpt2":
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOS, PAD],
        show_progress=False,
    )
    bpe.train_from_iterator((RESPONSES + [text for text, *_ in GLUED_CASES]) * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=PAD)


def encode_batch(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response ids with the end-of-turn token, as a rollout returns them; mask covers text + EOS."""
    rows = [[*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id] for text in texts]
    width = max(len(row) for row in rows) + 3  # always some padding
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def expected_span(text: str, name: str) -> tuple[int, int]:
    """Character range [start, end) of a component's span in the text, from spec §5; EOS counted at len(text)."""
    think, evidence, answer = (text.find(tag) for tag in ("<think>", "<evidence>", "<answer>"))
    end_of_text = len(text) + 1  # past the EOS token
    start = {"accuracy": think, "is_think": think}.get(name, 0)
    end = {"evidence": think, "is_observe": evidence, "is_think": answer}.get(name, end_of_text)
    return (0 if start < 0 else start), (end_of_text if end < 0 else end)


def test_tag_ids_are_the_bare_tag_encodings_and_merge_bytes(tokenizer: PreTrainedTokenizerFast) -> None:
    tag_ids = tag_token_ids(tokenizer)
    assert set(tag_ids) == {"<think>", "<evidence>", "<answer>"}
    for tag, ids in tag_ids.items():
        assert ids == tokenizer.encode(tag, add_special_tokens=False)
        assert tokenizer.decode(ids) == tag
        assert len(ids) < len(tag.encode())  # the trained vocabulary merged the tag's bytes


@pytest.mark.parametrize("drop", [None, "<think>", "<evidence>", "<answer>"])
def test_masks_token_by_token_on_real_tokenizer_output(tokenizer: PreTrainedTokenizerFast, drop: str | None) -> None:
    texts = [text.replace(drop, "") if drop else text for text in RESPONSES]
    ids, mask = encode_batch(tokenizer, texts)
    spans = component_span_masks(ids, mask, tag_token_ids(tokenizer))
    assert spans.shape == (len(texts), len(REWARD_COMPONENTS), ids.shape[1]) and spans.dtype == torch.bool
    for i, text in enumerate(texts):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        token_starts = [start for start, _ in offsets] + [len(text)]  # the EOS token sits at len(text)
        for j, name in enumerate(REWARD_COMPONENTS):
            start, end = expected_span(text, name)
            expected = [mask[i, t].item() == 1 and start <= token_starts[t] < end for t in range(len(token_starts))]
            expected += [False] * (ids.shape[1] - len(token_starts))  # padding
            assert spans[i, j].tolist() == expected, (name, text)
            decoded = tokenizer.decode(ids[i][spans[i, j]], skip_special_tokens=False)
            assert decoded == text[start:end] + (EOS if end > len(text) else ""), name


def test_decoded_spans_of_a_full_response(tokenizer: PreTrainedTokenizerFast) -> None:
    text = RESPONSES[1]
    ids, mask = encode_batch(tokenizer, [text])
    spans = component_span_masks(ids, mask, tag_token_ids(tokenizer))
    decoded = {name: tokenizer.decode(ids[0][spans[0, j]]) for j, name in enumerate(REWARD_COMPONENTS)}
    observe = "<observe> Two charts and a table.</observe>\n"
    evidence = "<evidence> [1]: revenue grew 11% [2]: no relevant information</evidence>\n"
    think = "<think> Chart [1]: 11%.</think>\n"
    assert decoded == {
        "accuracy": think + "<answer>11%</answer>" + EOS,
        "evidence": observe + evidence,
        "format": text + EOS,
        "overlong": text + EOS,
        "is_observe": observe,
        "is_think": think,
    }


def test_padding_is_never_in_a_span(tokenizer: PreTrainedTokenizerFast) -> None:
    ids, mask = encode_batch(tokenizer, RESPONSES)
    spans = component_span_masks(ids, mask, tag_token_ids(tokenizer))
    assert not spans[~mask.bool().unsqueeze(1).expand_as(spans)].any()
    assert torch.equal(spans[:, REWARD_COMPONENTS.index("format")], mask.bool())


def test_each_row_uses_its_own_tags(tokenizer: PreTrainedTokenizerFast) -> None:
    # the reference's batched masking zeroes the accuracy and is_think spans of every row but the first
    ids, mask = encode_batch(tokenizer, [RESPONSES[0], RESPONSES[2], RESPONSES[0]])
    spans = component_span_masks(ids, mask, tag_token_ids(tokenizer))
    for name in ("accuracy", "is_think"):
        j = REWARD_COMPONENTS.index(name)
        assert all(spans[i, j].any() for i in range(3)), name
        assert torch.equal(spans[0, j], spans[2, j])
        assert not torch.equal(spans[0, j], spans[1, j])


@pytest.mark.parametrize(("text", "tag", "in_gpt2", "in_qwen2"), GLUED_CASES)
def test_a_tag_glued_to_its_context_may_not_be_found(
    tokenizer: PreTrainedTokenizerFast,
    request: pytest.FixtureRequest,
    text: str,
    tag: str,
    in_gpt2: bool,
    in_qwen2: bool,
) -> None:
    found = {"gpt2": in_gpt2, "qwen2": in_qwen2}[request.node.callspec.params["tokenizer"]]
    tag_ids = tag_token_ids(tokenizer)
    ids, mask = encode_batch(tokenizer, [text])
    assert (find_subsequence(ids[0].tolist(), tag_ids[tag]) is not None) == found
    spans = component_span_masks(ids, mask, tag_ids)
    owner = {"<think>": "accuracy", "<evidence>": "is_observe"}[tag]
    whole = spans[0, REWARD_COMPONENTS.index(owner)].equal(mask[0].bool())  # the fallback covers every token
    assert whole != found


# --- hand-built ids -----------------------------------------------------------------------------------------------

TAG_IDS = {"<think>": [7, 8], "<evidence>": [5], "<answer>": [9]}


@pytest.mark.parametrize(
    ("ids", "pattern", "expected"),
    [
        ([1, 2, 3], [2, 3], 1),
        ([1, 2, 3], [1], 0),
        ([1, 2, 3], [3], 2),
        ([1, 2, 3], [3, 4], None),
        ([1, 2], [1, 2, 3], None),
        ([], [1], None),
        ([1, 1, 2], [1, 2], 1),
        ([7, 8, 1, 7, 8], [7, 8], 0),
        ([7, 1, 8], [7, 8], None),
    ],
)
def test_find_subsequence(ids: list[int], pattern: list[int], expected: int | None) -> None:
    assert find_subsequence(ids, pattern) == expected


def test_find_subsequence_rejects_an_empty_pattern() -> None:
    with pytest.raises(ValueError, match="empty"):
        find_subsequence([1, 2], [])


def test_tag_token_ids_rejects_a_tag_with_no_ids() -> None:
    class Silent:
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return [] if text == "<answer>" else [1]

    with pytest.raises(ValueError, match="<answer>"):
        tag_token_ids(Silent())


def spans_of(ids: list[int], valid: list[int]) -> dict[str, list[int]]:
    """Positions in each component's span for one hand-built response."""
    spans = component_span_masks(torch.tensor([ids]), torch.tensor([valid]), TAG_IDS)[0]
    return {name: spans[j].nonzero().flatten().tolist() for j, name in enumerate(REWARD_COMPONENTS)}


@pytest.mark.parametrize(
    ("ids", "valid", "expected"),
    [
        pytest.param(  # observe=1 evidence-tag=5 text=2 think=7,8 text=3 answer=9 text=4 eos=6, then padding
            [1, 5, 2, 7, 8, 3, 9, 4, 6, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
            {
                "accuracy": [3, 4, 5, 6, 7, 8],
                "evidence": [0, 1, 2],
                "format": list(range(9)),
                "overlong": list(range(9)),
                "is_observe": [0],
                "is_think": [3, 4, 5],
            },
            id="all tags",
        ),
        pytest.param(
            [1, 5, 2, 3, 9, 4],
            [1, 1, 1, 1, 1, 1],
            {
                "accuracy": list(range(6)),
                "evidence": list(range(6)),
                "format": list(range(6)),
                "overlong": list(range(6)),
                "is_observe": [0],
                "is_think": [0, 1, 2, 3],
            },
            id="no think: from the start / to the end",
        ),
        pytest.param(
            [1, 2, 7, 8, 3],
            [1, 1, 1, 1, 1],
            {
                "accuracy": [2, 3, 4],
                "evidence": [0, 1],
                "format": list(range(5)),
                "overlong": list(range(5)),
                "is_observe": list(range(5)),
                "is_think": [2, 3, 4],
            },
            id="no evidence, no answer",
        ),
        pytest.param(
            [1, 2, 3, 7, 8],
            [1, 1, 1, 0, 0],
            {
                "accuracy": [0, 1, 2],
                "evidence": [0, 1, 2],
                "format": [0, 1, 2],
                "overlong": [0, 1, 2],
                "is_observe": [0, 1, 2],
                "is_think": [0, 1, 2],
            },
            id="tag ids inside the padding are not searched",
        ),
        pytest.param(
            [1, 7, 8],
            [1, 1, 0],
            {
                "accuracy": [0, 1],
                "evidence": [0, 1],
                "format": [0, 1],
                "overlong": [0, 1],
                "is_observe": [0, 1],
                "is_think": [0, 1],
            },
            id="tag cut by the padding",
        ),
        pytest.param(
            [0, 0, 1, 5, 7, 8, 9],
            [0, 0, 1, 1, 1, 1, 1],
            {
                "accuracy": [4, 5, 6],
                "evidence": [2, 3],
                "format": [2, 3, 4, 5, 6],
                "overlong": [2, 3, 4, 5, 6],
                "is_observe": [2],
                "is_think": [4, 5],
            },
            id="left padding",
        ),
        pytest.param(
            [9, 1, 7, 8, 2, 7, 8],
            [1, 1, 1, 1, 1, 1, 1],
            {
                "accuracy": [2, 3, 4, 5, 6],
                "evidence": [0, 1],
                "format": list(range(7)),
                "overlong": list(range(7)),
                "is_observe": list(range(7)),
                "is_think": [],
            },
            id="first occurrence; answer before think gives an empty span",
        ),
    ],
)
def test_hand_built_spans(ids: list[int], valid: list[int], expected: dict[str, list[int]]) -> None:
    assert spans_of(ids, valid) == expected


def test_missing_tag_ids_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="<answer>"):
        component_span_masks(torch.tensor([[1]]), torch.tensor([[1]]), {"<think>": [7], "<evidence>": [5]})


def test_whole_response_masks() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    whole = whole_response_masks(mask)
    assert whole.shape == (2, 1, 3) and whole.dtype == torch.bool
    assert whole[:, 0].tolist() == [[True, True, False], [True, False, False]]


# --- rsgrpo.span_locator: char_offsets ------------------------------------------------------------------------------


def owner_span(spans: torch.Tensor, tag: str) -> torch.Tensor:
    """The span a tag starts (<think> → accuracy) or ends (<evidence> → is_observe), for row 0."""
    owner = {"<think>": "accuracy", "<evidence>": "is_observe"}[tag]
    return spans[0, REWARD_COMPONENTS.index(owner)]


@pytest.mark.parametrize(("text", "tag", "in_gpt2", "in_qwen2"), GLUED_CASES)
def test_char_offsets_find_a_tag_the_token_id_search_misses(
    tokenizer: PreTrainedTokenizerFast,
    request: pytest.FixtureRequest,
    text: str,
    tag: str,
    in_gpt2: bool,
    in_qwen2: bool,
) -> None:
    found_by_ids = {"gpt2": in_gpt2, "qwen2": in_qwen2}[request.node.callspec.params["tokenizer"]]
    ids, mask = encode_batch(tokenizer, [text])
    by_ids = component_span_masks(ids, mask, tag_token_ids(tokenizer))
    by_chars = char_offset_span_masks(ids, mask, tokenizer)
    whole = mask[0].bool()
    assert owner_span(by_ids, tag).equal(whole) != found_by_ids  # token_ids: the whole-response fallback when missed
    span = owner_span(by_chars, tag)
    assert not span.equal(whole)  # char_offsets: always found
    # The boundary token is the one holding the tag's "<" (it may carry a neighbouring character, e.g. " <" or "><").
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    boundary = next(t for t, (start, end) in enumerate(offsets) if start <= text.index(tag) < end)
    positions = span.nonzero().flatten().tolist()
    if tag == "<think>":  # accuracy: from the boundary token to the end
        assert positions == list(range(boundary, int(mask[0].sum())))
        assert tokenizer.decode(ids[0][span]).endswith(text[text.index(tag) :] + EOS)
    else:  # is_observe: from the start up to the boundary token
        assert positions == list(range(boundary))
    if found_by_ids:  # where both find the tag, both give the same spans
        assert torch.equal(by_ids, by_chars)


@pytest.mark.parametrize("drop", [None, "<think>", "<evidence>", "<answer>"])
def test_char_offsets_equal_token_ids_where_every_tag_is_its_own_token(
    tokenizer: PreTrainedTokenizerFast, drop: str | None
) -> None:
    texts = [text.replace(drop, "") if drop else text for text in RESPONSES]
    ids, mask = encode_batch(tokenizer, texts)
    assert torch.equal(
        char_offset_span_masks(ids, mask, tokenizer), component_span_masks(ids, mask, tag_token_ids(tokenizer))
    )


def test_char_offsets_on_ids_that_are_not_the_canonical_encoding(tokenizer: PreTrainedTokenizerFast) -> None:
    """Sampled ids need not be how the tokenizer would encode their text: the prefix-decode path maps them."""
    pieces = ["ok\n", "<think>", *" Image"]  # one character at a time: " Image" is fewer tokens encoded whole
    row = [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)] + [tokenizer.eos_token_id]
    assert row[:-1] != tokenizer.encode("".join(pieces), add_special_tokens=False)  # split word
    ids, mask = torch.tensor([row]), torch.ones((1, len(row)), dtype=torch.long)
    by_chars = char_offset_span_masks(ids, mask, tokenizer)
    assert torch.equal(by_chars, component_span_masks(ids, mask, tag_token_ids(tokenizer)))  # bare ids present here
    think = len(tokenizer.encode(pieces[0], add_special_tokens=False))
    assert by_chars[0, REWARD_COMPONENTS.index("accuracy")].nonzero().flatten().tolist() == list(range(think, len(row)))


def test_span_locator_by_name(tokenizer: PreTrainedTokenizerFast) -> None:
    ids, mask = encode_batch(tokenizer, ["x</evidence><think> y"])
    assert torch.equal(
        span_locator("token_ids", tokenizer)(ids, mask), component_span_masks(ids, mask, tag_token_ids(tokenizer))
    )
    assert torch.equal(span_locator("char_offsets", tokenizer)(ids, mask), char_offset_span_masks(ids, mask, tokenizer))
    with pytest.raises(ValueError, match="unknown span locator"):
        span_locator("regex", tokenizer)


# --- rsgrpo.span_masks: released (the reference's reward function before its commit 6d43409) ---------------------

NORMAL = [1, 5, 2, 7, 8, 3, 9, 4]  # observe=1 evidence-tag=5 text=2 think=7,8 text=3 answer=9 text=4
ANSWER_FIRST = [9, 1, 7, 8, 2, 0, 0, 0]  # <answer> before <think>, no <evidence>; 5 valid tokens
ALL_8, ALL_5 = list(range(8)), list(range(5))
FIXED_NORMAL = {
    "accuracy": [3, 4, 5, 6, 7],
    "evidence": [0, 1, 2],
    "format": ALL_8,
    "overlong": ALL_8,
    "is_observe": [0],
    "is_think": [3, 4, 5],
}


def released_spans(
    rows: list[list[int]], valid: list[list[int]], first: list[bool], last: list[bool]
) -> list[dict[str, list[int]]]:
    ids, mask = torch.tensor(rows), torch.tensor(valid)
    spans = released_span_masks(component_span_bounds(ids, mask, TAG_IDS), mask.bool(), first, last)
    return [{name: row[j].nonzero().flatten().tolist() for j, name in enumerate(REWARD_COMPONENTS)} for row in spans]


@pytest.mark.parametrize(
    ("rows", "valid", "first", "last", "expected"),
    [
        pytest.param(
            [NORMAL, ANSWER_FIRST, NORMAL],
            [[1] * 8, [1] * 5 + [0] * 3, [1] * 8],
            [True, False, False],
            [False, False, True],
            [
                FIXED_NORMAL,  # row 0: its own spans (the later rows' passes multiply by the same <think> index)
                # row 1: no accuracy / is_think (row 0's pass saw its start index "past the end"); evidence and
                # is_observe also cut at its <answer> (column 0) by row 2's pass: both empty
                {"accuracy": [], "evidence": [], "format": ALL_5, "overlong": ALL_5, "is_observe": [], "is_think": []},
                # row 2, the call's last row: no accuracy / is_think, the end tags as in the fixed masks
                {**FIXED_NORMAL, "accuracy": [], "is_think": []},
            ],
            id="one reward call of three rows",
        ),
        pytest.param(
            [ANSWER_FIRST],
            [[1] * 5 + [0] * 3],
            [True],
            [True],
            [
                {
                    "accuracy": [2, 3, 4],
                    "evidence": [0, 1],
                    "format": ALL_5,
                    "overlong": ALL_5,
                    "is_observe": ALL_5,
                    "is_think": [],  # [<think> 2, <answer> 0): empty in the fixed masks as well
                }
            ],
            id="a call of one row keeps the fixed masks",
        ),
        pytest.param(
            [NORMAL, NORMAL, NORMAL, NORMAL],
            [[1] * 8] * 4,
            [True, False, True, False],
            [False, True, False, True],
            [FIXED_NORMAL, {**FIXED_NORMAL, "accuracy": [], "is_think": []}] * 2,
            id="two reward calls: row 0 of each keeps accuracy and is_think",
        ),
        pytest.param(
            [NORMAL, NORMAL],
            [[1] * 8] * 2,
            [False, False],
            [False, True],
            [{**FIXED_NORMAL, "accuracy": [], "is_think": []}] * 2,
            id="the call's first group was filtered out: no row keeps them",
        ),
    ],
)
def test_released_masks_by_hand(
    rows: list[list[int]], valid: list[list[int]], first: list[bool], last: list[bool], expected: list[dict]
) -> None:
    assert released_spans(rows, valid, first, last) == expected


def reference_loop(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The pre-6d43409 procedure step by step, in our words (spec §8): one start and one end index per row, shared by
    the components, initialised to the row width; processing row i sets row i's index for component j, then multiplies
    component j's masks of *every* row by the masks those indices give. One reward call = all rows."""
    rows, width = ids.shape
    masks = valid.bool().unsqueeze(1).repeat(1, len(REWARD_COMPONENTS), 1)
    start, end = torch.full((rows,), width), torch.full((rows,), width)
    t = torch.arange(width)
    for i in range(rows):
        for j, name in enumerate(REWARD_COMPONENTS):
            start_tag, end_tag = SPAN_TAGS[name]
            if start_tag is not None:
                found = find_subsequence(ids[i].tolist(), TAG_IDS[start_tag])
                start[i] = 0 if found is None else found
                masks[:, j] &= t >= start.unsqueeze(1)
            if end_tag is not None:
                found = find_subsequence(ids[i].tolist(), TAG_IDS[end_tag])
                end[i] = width if found is None else found
                masks[:, j] &= t < end.unsqueeze(1)
    return masks


@pytest.mark.parametrize("seed", range(20))
def test_released_masks_equal_the_reference_procedure_on_random_calls(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows = int(torch.randint(1, 7, (1,), generator=generator))
    ids = torch.randint(1, 10, (rows, 12), generator=generator)  # tags 5, 7 8, 9 anywhere, often several times
    lengths = torch.randint(1, 13, (rows,), generator=generator)
    valid = torch.arange(12) < lengths.unsqueeze(1)
    ids = torch.where(valid, ids, torch.zeros_like(ids))  # right padding with an id that is no tag
    first, last = [r == 0 for r in range(rows)], [r == rows - 1 for r in range(rows)]
    released = released_span_masks(component_span_bounds(ids, valid.long(), TAG_IDS), valid, first, last)
    assert torch.equal(released, reference_loop(ids, valid.long()))


def test_row_edges_mark_a_calls_first_and_last_response() -> None:
    first, last = row_edges([(True, False), (False, True), (False, False)], n=2)
    assert first == [True, False, False, False, False, False]
    assert last == [False, False, False, True, False, False]


def test_released_masks_need_one_edge_per_row() -> None:
    with pytest.raises(ValueError, match="one entry per row"):
        released_span_masks([[[0, 1]] * 6], torch.ones(1, 1, dtype=torch.bool), [True, False], [True])
