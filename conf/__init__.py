# Makes conf/ importable as `pdebm.conf` in an installed wheel (see pyproject.toml); Hydra ignores it.
