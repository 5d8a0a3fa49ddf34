"""Faust agents: thin I/O around the pure policies in ``policies/``."""
