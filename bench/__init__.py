"""bench: the harness around the reference and the backends (``vae-bench`` command line)."""
