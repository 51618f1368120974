"""The hub loader on folders laid out like hub snapshots (no network), and its offline failure mode.

The local "hub" below holds one test set per supported layout: `top3_test.jsonl` with an image folder (ChartQA),
`top3_test.jsonl` with an `images.parquet` table (DocVQA, the layout reported for the released sets) and a parquet
file with the images embedded in the rows (InfoVQA), plus a training snapshot laid out like the reference's
`data/Train` (LLaMA-Factory `dataset_info.json` + sharegpt json, EasyR1 `*_GRPO.jsonl`). Every page is a flat
colour, so a test can tell whether a record points at the right page after conversion.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evisrag_core.data.generator import COLOURS as GENERATED_COLOURS
from evisrag_core.data.hub import download_from_hub, import_local
from evisrag_core.data.schema import (
    IMAGE_PLACEHOLDER,
    MANIFEST_FILE,
    RL_FILE,
    RL_VAL_FILE,
    SFT_FILE,
    TEST_FILE,
    load_test_split,
)
from evisrag_core.data.snapshot import HUB_TEST_SETS, HUB_TRAIN_MIRROR, HubUnavailableError, hub_test_repo, snapshot
from evisrag_core.data.verify import verify_split
from evisrag_core.io import BadRecordError, read_jsonl

COLOURS = {**GENERATED_COLOURS, "grey": (128, 128, 128)}  # the generator's page colours, and one more
TAGGED = (
    "<observe>o</observe><evidence>[1]: {e} [2]: no relevant information</evidence><think>t</think><answer>{a}</answer>"
)


def image_bytes(colour: str, fmt: str = "PNG", size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buffer, format=fmt)
    return buffer.getvalue()


def colour_of(path: Path) -> str:
    """The name of the flat colour closest to the image's centre pixel (JPEG shifts colours slightly)."""
    with Image.open(path) as image:
        pixel = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], pixel, strict=True)))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# What each test set asks, and the colours of the pages each question must end up pointing at, in order.
CHARTQA = [
    ({"qid": "cq-1", "query": "What is the peak?", "answer": ["12"], "is_sufficient": True}, ["red", "green", "blue"]),
    ({"qid": "cq-2", "query": "Which year?", "answer": [], "is_sufficient": False}, ["blue", "yellow", "red"]),
]
DOCVQA = [
    ({"qid": 7, "query": "Who signed?", "answer": ["Ann", "ann b"], "is_sufficient": True}, ["purple", "orange"]),
    ({"qid": 8, "query": "What date?", "answer": ["1 May"], "is_sufficient": True}, ["grey", "purple", "orange"]),
]
INFOVQA = [
    ({"qid": 101, "query": "How many?", "answer": ["3"], "is_sufficient": True}, ["green", "yellow"]),
    ({"qid": 102, "query": "What share?", "answer": ["no"], "is_sufficient": False}, ["orange", "blue"]),
]
EXPECTED = {"ChartQA": CHARTQA, "DocVQA": DOCVQA, "InfoVQA": INFOVQA}


def build_chartqa(folder: Path) -> None:
    """jsonl + image folder; paths as the reference scripts use them (relative to the set's folder)."""
    files = {"red": "imgs/c1.png", "green": "imgs/c2.png", "blue": "imgs/c3.png", "yellow": "imgs/c4.jpg"}
    for colour, rel in files.items():
        write_file(folder / rel, image_bytes(colour, "JPEG" if rel.endswith(".jpg") else "PNG"))
    rows = [{**row, "image": [files[c] for c in colours]} for row, colours in CHARTQA]
    rows[0]["posImgs"] = ["./VisRAG-Ret-Test-ChartQA/imgs/c1.png"]
    write_jsonl(folder / TEST_FILE, rows)


def build_docvqa(folder: Path) -> None:
    """jsonl + `images.parquet` (`path`, `image` struct). `grey` is keyed by file name only, `red` is unused."""
    refs = {"purple": "imgs/d1.png", "orange": "imgs/d2.png", "grey": "imgs/d3.png"}
    keys = {"purple": "imgs/d1.png", "orange": "imgs/d2.png", "grey": "d3.png", "red": "imgs/unused.png"}
    images = [{"bytes": image_bytes(c), "path": Path(k).name} for c, k in keys.items()]
    table = pa.table({"path": list(keys.values()), "image": pa.array(images, type=IMAGE_STRUCT)})
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "images.parquet")
    write_jsonl(folder / TEST_FILE, [{**row, "image": [refs[c] for c in colours]} for row, colours in DOCVQA])


def build_infovqa(folder: Path) -> None:
    """Rows with their pages embedded; every embedded page has the same file name, `page.png`."""
    rows = [
        {**row, "image": [{"bytes": image_bytes(c), "path": "page.png"} for c in colours]} for row, colours in INFOVQA
    ]
    schema = pa.schema(
        [
            ("qid", pa.int64()),
            ("query", pa.string()),
            ("image", pa.list_(IMAGE_STRUCT)),
            ("answer", pa.list_(pa.string())),
            ("is_sufficient", pa.bool_()),
        ]
    )
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "data" / "test-00000-of-00001.parquet")


SFT_SOURCE = [
    {
        "conversations": [
            {"from": "human", "value": f"Question: what colour?{IMAGE_PLACEHOLDER}{IMAGE_PLACEHOLDER}"},
            {"from": "gpt", "value": TAGGED.format(e="red page", a="red")},
        ],
        "images": ["images/t1.jpg", "images/t2.jpg"],
    },
    {
        "id": "sft-b",
        "conversations": [
            {"from": "human", "value": "Question: which page is green?"},
            {"from": "gpt", "value": TAGGED.format(e="green page", a="2")},
        ],
        "images": ["images/t2.jpg", "images/t3.jpg"],
    },
]
RL_SOURCE = [
    {
        "prompt": "What colour is page one?",
        "image": ["images/t1.jpg", "images/t3.jpg"],
        "answer": TAGGED.format(e="red", a="red"),
    },
    {
        "prompt": "Is there blue?",
        "image": ["images/t3.jpg"],
        "answer": TAGGED.format(e="blue", a="yes"),
        "is_sufficient": True,
    },
]
RL_VAL_SOURCE = [
    {
        "prompt": "Which is green?",
        "image": ["images/t2.jpg", "images/t1.jpg"],
        "answer": TAGGED.format(e="green", a="1"),
    },
]
TRAIN_COLOURS = {"images/t1.jpg": "red", "images/t2.jpg": "green", "images/t3.jpg": "blue"}


def build_train(folder: Path) -> None:
    """Laid out like the reference's `data/Train`: what `full_sft.sh` and `run_rsgrpo.sh` read."""
    for rel, colour in TRAIN_COLOURS.items():
        write_file(folder / rel, image_bytes(colour, "JPEG"))
    info = {
        "evidencecot": {
            "file_name": "evidencecot.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images"},
        }
    }
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    (folder / "evidencecot.json").write_text(json.dumps(SFT_SOURCE), encoding="utf-8")
    write_jsonl(folder / "evidencecot_GRPO.jsonl", RL_SOURCE)
    write_jsonl(folder / "test_GRPO.jsonl", RL_VAL_SOURCE)
    (folder / "README.md").write_text("# EVisRAG-Train\n", encoding="utf-8")


@pytest.fixture
def local_hub(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    build_chartqa(root / "EVisRAG-Test-ChartQA")
    build_docvqa(root / "EVisRAG-Test-DocVQA")
    build_infovqa(root / "EVisRAG-Test-InfoVQA")
    build_train(root / "EVisRAG-Train")
    return root


@pytest.fixture
def imported(local_hub: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / "data"
    return out, import_local(local_hub, out)


def test_import_local_writes_every_split_and_the_manifest(imported: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = imported
    assert manifest["source"] == "local"
    assert manifest["benchmarks"] == ["ChartQA", "InfoVQA", "DocVQA"]  # every set present, in hub order
    assert manifest["counts"] == {
        "test/ChartQA": 2,
        "test/InfoVQA": 2,
        "test/DocVQA": 2,
        "train/sft": 2,
        "train/rl": 2,
    }
    assert manifest["validation_counts"] == {"train/rl_val": 1}
    assert json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8")) == manifest
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folders left


@pytest.mark.parametrize("benchmark", ["ChartQA", "DocVQA", "InfoVQA"])
def test_test_records_keep_their_fields_and_point_at_the_right_pages(
    imported: tuple[Path, dict[str, Any]], benchmark: str
) -> None:
    out, _ = imported
    split = out / "test" / benchmark
    records = load_test_split(split)
    assert len(records) == len(EXPECTED[benchmark])
    for record, (source, colours) in zip(records, EXPECTED[benchmark], strict=True):
        assert (record.qid, record.query, record.answer) == (source["qid"], source["query"], source["answer"])
        assert record.is_sufficient is source["is_sufficient"]
        assert all(p.startswith("images/") for p in record.image)
        assert [colour_of(split / p) for p in record.image] == colours


def test_extra_source_fields_are_kept_and_pages_are_stored_once(imported: tuple[Path, dict[str, Any]]) -> None:
    out, _ = imported
    chartqa = read_jsonl(out / "test" / "ChartQA" / TEST_FILE)
    assert chartqa[0]["posImgs"] == ["./VisRAG-Ret-Test-ChartQA/imgs/c1.png"]
    assert chartqa[0]["image"][0] == "images/imgs/c1.png"  # named after the source path
    stored = sorted(p.name for p in (out / "test" / "ChartQA" / "images").rglob("*") if p.is_file())
    assert stored == ["c1.png", "c2.png", "c3.png", "c4.jpg"]
    docvqa = sorted(p.name for p in (out / "test" / "DocVQA" / "images").rglob("*") if p.is_file())
    assert docvqa == ["d1.png", "d2.png", "d3.png"]  # the unused table row is not extracted


def test_sft_records_are_chats_with_one_placeholder_per_image(imported: tuple[Path, dict[str, Any]]) -> None:
    out, _ = imported
    train = out / "train"
    records = read_jsonl(train / SFT_FILE)
    assert [r["id"] for r in records] == ["evidencecot-1", "sft-b"]
    for record, source in zip(records, SFT_SOURCE, strict=True):
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        assert record["messages"][1]["content"] == source["conversations"][1]["value"]
        assert record["messages"][0]["content"].count(IMAGE_PLACEHOLDER) == len(record["images"])
        assert [colour_of(train / p) for p in record["images"]] == [TRAIN_COLOURS[p] for p in source["images"]]
    assert records[1]["messages"][0]["content"] == "Question: which page is green?" + IMAGE_PLACEHOLDER * 2


def test_rl_records_keep_prompt_answer_and_validation_stays_apart(imported: tuple[Path, dict[str, Any]]) -> None:
    out, _ = imported
    train = out / "train"
    for file_name, sources in ((RL_FILE, RL_SOURCE), (RL_VAL_FILE, RL_VAL_SOURCE)):
        records = read_jsonl(train / file_name)
        assert [(r["prompt"], r["answer"]) for r in records] == [(s["prompt"], s["answer"]) for s in sources]
        for record, source in zip(records, sources, strict=True):
            assert [colour_of(train / p) for p in record["image"]] == [TRAIN_COLOURS[p] for p in source["image"]]
    assert read_jsonl(train / RL_FILE)[1]["is_sufficient"] is True


def test_import_local_takes_only_the_chosen_benchmarks(local_hub: Path, tmp_path: Path) -> None:
    manifest = import_local(local_hub, tmp_path / "out", benchmarks=["DocVQA"], include_train=False)
    assert manifest["counts"] == {"test/DocVQA": 2}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST_FILE, "test"]


def test_import_local_names_a_missing_benchmark_folder(local_hub: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="EVisRAG-Test-SlideVQA"):
        import_local(local_hub, tmp_path / "out", benchmarks=["ChartQA", "SlideVQA"])


def test_a_failed_import_names_the_image_and_keeps_the_previous_data(local_hub: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "previous.txt").write_text("old data", encoding="utf-8")
    (local_hub / "EVisRAG-Train" / "images" / "t3.jpg").unlink()
    with pytest.raises(BadRecordError, match=r"evidencecot\.json: record 2 image 2: image 'images/t3\.jpg' not found"):
        import_local(local_hub, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hub") == ["data"]
    assert (out / "previous.txt").read_text(encoding="utf-8") == "old data"


def test_a_source_path_leaving_the_snapshot_is_refused(local_hub: Path, tmp_path: Path) -> None:
    folder = local_hub / "EVisRAG-Test-ChartQA"
    write_file(local_hub / "outside.png", image_bytes("red"))
    write_jsonl(folder / TEST_FILE, [{**CHARTQA[0][0], "image": ["../outside.png"]}])
    with pytest.raises(BadRecordError, match=r"top3_test\.jsonl:1 image 1: image path '\.\./outside\.png'"):
        import_local(local_hub, tmp_path / "out", benchmarks=["ChartQA"], include_train=False)


# ------------------------------------------------------------------------------------------------------------
# verify_split
# ------------------------------------------------------------------------------------------------------------


def noisy_image(path: Path, fmt: str = "PNG") -> None:
    """An image large enough that cutting it leaves a valid header but missing pixel data."""
    rng = random.Random(0)
    image = Image.new("RGB", (64, 64))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64 * 64)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """A valid two-row split; tests break row 2."""
    folder = tmp_path / "split"
    noisy_image(folder / "images" / "ok.png")
    noisy_image(tmp_path / "outside.png")
    rows = [
        {"qid": "a", "query": "q?", "image": ["images/ok.png"], "answer": ["x"], "is_sufficient": True},
        {"qid": "b", "query": "q?", "image": ["images/ok.png"], "answer": ["y"], "is_sufficient": True},
    ]
    write_jsonl(folder / TEST_FILE, rows)
    return folder


def break_row_2(split: Path, image: str) -> None:
    rows = read_jsonl(split / TEST_FILE)
    rows[1]["image"] = ["images/ok.png", image]
    write_jsonl(split / TEST_FILE, rows)


def test_verify_split_accepts_a_valid_split_and_checks_the_row_count(split: Path) -> None:
    assert verify_split(split, TEST_FILE, expected_rows=2) == 2
    assert verify_split(split, TEST_FILE) == 2
    with pytest.raises(BadRecordError, match="2 rows, expected 3"):
        verify_split(split, TEST_FILE, expected_rows=3)


def _truncated_png(split: Path) -> str:
    data = (split / "images" / "ok.png").read_bytes()
    write_file(split / "images" / "cut.png", data[: len(data) * 2 // 3])
    return "images/cut.png"


def _truncated_jpeg(split: Path) -> str:
    """Pillow's `verify()` passes a cut JPEG; only decoding the pixels finds it."""
    noisy_image(split / "images" / "whole.jpg", "JPEG")
    data = (split / "images" / "whole.jpg").read_bytes()
    write_file(split / "images" / "cut.jpg", data[: len(data) * 2 // 3])
    return "images/cut.jpg"


def _symlink_out(split: Path) -> str:
    (split / "images" / "link.png").symlink_to(split.parent / "outside.png")
    return "images/link.png"


@pytest.mark.parametrize(
    ("make_image", "problem"),
    [
        (lambda split: "images/nope.png", "is missing"),
        (_truncated_png, "does not decode"),
        (_truncated_jpeg, "does not decode"),
        (lambda split: "../outside.png", "not a relative path inside"),
        (lambda split: str(split.parent / "outside.png"), "not a relative path inside"),
        (_symlink_out, "outside"),
    ],
    ids=["missing", "truncated-png", "truncated-jpeg", "dot-dot", "absolute", "symlink-out"],
)
def test_verify_split_names_file_line_and_image(split: Path, make_image, problem: str) -> None:
    image = make_image(split)
    break_row_2(split, image)
    with pytest.raises(BadRecordError) as excinfo:
        verify_split(split, TEST_FILE, expected_rows=2)
    message = str(excinfo.value)
    assert f"{split / TEST_FILE}:2" in message
    assert repr(image) in message
    assert problem in message


def test_verify_split_checks_sft_placeholders(tmp_path: Path) -> None:
    noisy_image(tmp_path / "images" / "a.png")
    messages = [{"role": "user", "content": "q<image>"}, {"role": "assistant", "content": "a"}]
    write_jsonl(tmp_path / SFT_FILE, [{"id": "1", "messages": messages, "images": ["images/a.png", "images/a.png"]}])
    with pytest.raises(BadRecordError, match=r"sft\.jsonl:1: 1 <image> placeholder\(s\) in the user turns for 2"):
        verify_split(tmp_path, SFT_FILE)


# ------------------------------------------------------------------------------------------------------------
# The hub itself (unreachable here: offline mode, or a closed local port)
# ------------------------------------------------------------------------------------------------------------


def test_hub_repo_names() -> None:
    assert [hub_test_repo(n) for n in HUB_TEST_SETS][:2] == [
        "openbmb/EVisRAG-Test-ChartQA",
        "openbmb/EVisRAG-Test-InfoVQA",
    ]
    with pytest.raises(ValueError, match="unknown benchmark"):
        hub_test_repo("MMLongBench")


def _assert_explains_the_way_out(message: str) -> None:
    assert "data.source: embedded" in message
    assert "data.source: local" in message and "data.local_dir" in message


def test_snapshot_fails_at_once_in_offline_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE") as excinfo:
        snapshot(hub_test_repo("ChartQA"), tmp_path / "cache", tries=3, backoff_s=5.0)
    assert time.monotonic() - start < 2.0  # no backoff sleeps: retrying cannot help
    _assert_explains_the_way_out(str(excinfo.value))


@pytest.fixture
def closed_port_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the real client at a closed local port; a token is set to check it never shows up."""
    secret = "hf_notarealtoken_0123456789"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", secret)
    return secret


def test_snapshot_reports_an_unreachable_hub_quickly(
    closed_port_hub: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match=r"after 1 attempt\(s\): the hub is unreachable") as excinfo:
        snapshot(hub_test_repo("ChartQA"), tmp_path / "cache", tries=1)
    assert time.monotonic() - start < 10.0
    _assert_explains_the_way_out(str(excinfo.value))
    assert closed_port_hub not in str(excinfo.value) and closed_port_hub not in caplog.text


def test_snapshot_retries_connection_errors_with_backoff(
    closed_port_hub: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="evisrag_core.data.snapshot")
    with pytest.raises(HubUnavailableError, match=r"after 3 attempt\(s\)"):
        snapshot(hub_test_repo("DocVQA"), tmp_path / "cache", tries=3, backoff_s=0.01)
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries == [
        "openbmb/EVisRAG-Test-DocVQA: the hub is unreachable (connection failed); retrying in 0.0 s (attempt 2 of 3)",
        "openbmb/EVisRAG-Test-DocVQA: the hub is unreachable (connection failed); retrying in 0.0 s (attempt 3 of 3)",
    ]


def test_download_from_hub_writes_nothing_when_the_hub_is_unreachable(closed_port_hub: str, tmp_path: Path) -> None:
    out = tmp_path / "data"
    with pytest.raises(HubUnavailableError):
        download_from_hub(out, tmp_path / "cache", ["ChartQA"], include_train=True, revision=None, tries=1)
    assert not out.exists()


def fill_hub_cache(cache: Path, repo_id: str, source: Path, commit: str) -> None:
    """Lay a snapshot out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    storage = cache / f"datasets--{repo_id.replace('/', '--')}"
    shutil.copytree(source, storage / "snapshots" / commit)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit, encoding="utf-8")


def test_download_from_hub_converts_cached_snapshots_when_the_hub_is_down(
    closed_port_hub: str, local_hub: Path, tmp_path: Path
) -> None:
    """The real client falls back to its cache when the hub cannot be reached; the result is the usual layout."""
    cache = tmp_path / "cache"
    fill_hub_cache(cache, hub_test_repo("DocVQA"), local_hub / "EVisRAG-Test-DocVQA", "d" * 40)
    fill_hub_cache(cache, HUB_TRAIN_MIRROR, local_hub / "EVisRAG-Train", "e" * 40)
    out = tmp_path / "data"
    manifest = download_from_hub(
        out, cache, ["DocVQA"], include_train=True, revision=None, train_repo=HUB_TRAIN_MIRROR, tries=1
    )
    assert manifest["source"] == "hub"
    assert manifest["repos"] == {"openbmb/EVisRAG-Test-DocVQA": "d" * 40, HUB_TRAIN_MIRROR: "e" * 40}
    assert manifest["counts"] == {"test/DocVQA": 2, "train/sft": 2, "train/rl": 2}
    records = load_test_split(out / "test" / "DocVQA")
    assert [[colour_of(out / "test" / "DocVQA" / p) for p in r.image] for r in records] == [c for _, c in DOCVQA]
