"""Side-by-side benchmarks (`make bench`) and the reproduction table (`make reproduce`).

Not collected by `make test`; `tests/test_benchmarks.py` runs every benchmark function at a tiny
size so this code cannot rot.
"""
