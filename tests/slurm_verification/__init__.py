"""A real single-node Slurm for the tests (``cluster.py``): munged, slurmctld and slurmd on
localhost with a config written for the test, so that the README's job array is run by Slurm
itself (tests/bench/test_slurm.py)."""
