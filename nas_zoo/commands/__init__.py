"""Sub-commands of `nas-zoo` (see nas_zoo.cli)."""
