"""Koans: the Koan model, pack loaders (TOML pack, rustlings checkout), splits, the frozen eval lock."""

from sleepy.koans.model import SPLITS, Koan, KoanError
from sleepy.koans.pack import BUILTIN, Pack, find_leaks, load_pack

__all__ = ["BUILTIN", "SPLITS", "Koan", "KoanError", "Pack", "find_leaks", "load_pack"]
