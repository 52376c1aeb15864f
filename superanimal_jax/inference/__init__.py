"""Compiled inference: the pose and detector runtimes, the top-down pipeline, ``load``."""
