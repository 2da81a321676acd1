"""Benchmarks: each prints ratios against a baseline measured in the same process (`python -m bench` runs them all),
plus the full-size memory estimator (`memory.py`, whose activation measurements and fits are public: the tests check
them) and its tables. Not part of the installed package: may import anything in dali_hf; nothing in dali_hf imports
it."""
