"""jobq's benchmarks, run as one command: `python -m benchmarks run` (see `__main__.py`).

`conversion_latency.py` is a separate, older measurement with its own command.
"""
