"""Simulated ground-truth worlds: the `World` model, bundled YAML worlds and `load_world`."""
from trainers.worlds.world import (
    World, WorldError, bundled_worlds, load_world, world_from_dict,
)

__all__ = ["World", "WorldError", "bundled_worlds", "load_world", "world_from_dict"]
