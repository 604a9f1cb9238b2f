"""How the numbers are checked to hold on CPUs other than this one: the float32 calibration and
every CPU backend's gate, recomputed with torch's MKL held to an instruction set below the
machine's own (``restricted_isa.py``, run in a child process by
tests/bench/test_gate_cross_isa.py)."""
