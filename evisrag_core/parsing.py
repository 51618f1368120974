"""Reading the tagged model output (`<observe>…</observe><evidence>…</evidence><think>…</think><answer>…</answer>`).

Generated text is arbitrary: tags may be missing, repeated or out of order. These functions never raise on a string;
they return what the evaluation (spec §3) or a reward (spec §4) needs and leave judging the format to the caller.
"""

from __future__ import annotations


def open_tag(tag: str) -> str:
    return f"<{tag}>"


def close_tag(tag: str) -> str:
    return f"</{tag}>"


def extract_answer(text: str) -> str:
    """The answer the evaluation scores (spec §3 step 1).

    Text after the first `<answer>` up to the next `</answer>`, or to the end when it was never closed (a truncated
    generation still gets credit for what it said); the whole text when there is no `<answer>`, so models that do not
    use tags can be scored too.
    """
    start = text.find(open_tag("answer"))
    if start == -1:
        return text
    body = text[start + len(open_tag("answer")) :]
    end = body.find(close_tag("answer"))
    return body if end == -1 else body[:end]


def extract_block(text: str, tag: str) -> str | None:
    """Content (unstripped) between the first `<tag>` and the first `</tag>` after it; None when either is missing.

    Unlike `extract_answer` an unclosed block gives None: rewards treat a block as present only when it is closed.
    """
    start = text.find(open_tag(tag))
    if start == -1:
        return None
    start += len(open_tag(tag))
    end = text.find(close_tag(tag), start)
    return None if end == -1 else text[start:end]
