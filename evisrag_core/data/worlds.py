"""Which embedded world `data.embedded.world` writes: `default` (evisrag_core.data.generator, the pipeline's default)
or `hard` (evisrag_core.data.hard_world, the estimator study's world). Both take the same arguments and write the
same files in the same forms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evisrag_core.data.generator import GeneratorSpec, generate_dataset
from evisrag_core.data.hard_world import generate_hard_dataset

WORLDS: dict[str, Callable[..., dict[str, Any]]] = {"default": generate_dataset, "hard": generate_hard_dataset}


def generate_world(
    world: str,
    out_dir: Path,
    spec: GeneratorSpec,
    splits: list[str],
    n_test_per_split: int,
    n_sft: int,
    n_rl: int,
    progress: Callable[[int], Any] = lambda n: None,
) -> dict[str, Any]:
    """Write world `world`'s dataset to `out_dir`; returns its manifest."""
    if world not in WORLDS:
        raise ValueError(f"unknown embedded world {world!r}; choose from {sorted(WORLDS)}")
    return WORLDS[world](out_dir, spec, splits, n_test_per_split, n_sft, n_rl, progress)
