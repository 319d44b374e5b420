"""minigen's benchmarks: the workloads W0-W7 described in benchmarks/README.md.

    python -m benchmarks                 # all workloads, minigen and its PyTorch twin
    python -m benchmarks --only W1 --check

One module per workload (``w0_matmul`` ... ``w5_dit_block``) holds the minigen
model and step; ``common`` the timing harness; ``run`` the command line.  The
PyTorch twins live in ``tests/torch_twins.py`` (one copy, shared with the oracle
tests).  This file imports nothing, so that
``__main__`` can set the thread count before NumPy loads.
"""
