"""Candidate servers and parser experiments of bench/layers.py (see its docstring)."""
