"""Weights in and out: the torch-free reader, conversion rules and tables, model directories, the hub."""
