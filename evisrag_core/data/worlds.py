"""Which embedded world `data.embedded.world` writes: `default` (evisrag_core.data.generator, the pipeline's default)
or `hard` (evisrag_core.data.hard_world, the estimator study's world). `generator.write_world` writes either, in the
same files and forms."""

from __future__ import annotations

from evisrag_core.data.generator import DEFAULT_WORLD, World
from evisrag_core.data.hard_world import HARD_WORLD

WORLDS: dict[str, World] = {world.name: world for world in (DEFAULT_WORLD, HARD_WORLD)}


def world_named(name: str) -> World:
    """The world `data.embedded.world` names; ValueError for another name."""
    if name not in WORLDS:
        raise ValueError(f"unknown embedded world {name!r}; choose from {sorted(WORLDS)}")
    return WORLDS[name]
