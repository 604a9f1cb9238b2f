"""``vae-bench compare OLD NEW``: row by row, did anything get slower, less accurate, or stop
agreeing with the reference, by how much and how surely? Exit status 0 no regression, 1 a
regression beyond the gate, 3 undecided (nothing beyond the gate, but something it could not
judge), 2 unusable input.

Each gated row's speed-up ratio NEW/OLD comes with its interval and a verdict (faster, slower,
``~`` for no significant change, undecided), both from the per-window values
(``significance``); each backend has a geometric mean over its rows. How a comparison
is written out (text, Markdown, JSON): ``formats``.

Throughput is compared as each backend's speed-up over PyTorch eager *measured in the same
run* on the same device (``bench.tables``: torch on the CPU, torch-cuda on a GPU), the
ratio the harness's interleaving makes trustworthy, not as raw samples/s: on a shared machine
raw medians move with every backend at once, same-run speed-ups far less. The yardstick rows
are therefore not gated unless --absolute. Default gates: a 25% drop in speed-up that is also
significant over the timed windows (``significance``: a one-sided Mann-Whitney U test on the
per-window speed-ups, p < 0.05; a threshold alone cries wolf on shared machines; too few
windows to test is undecided, not a pass); an ELBO drop of more than 1 nat (the same seed
reproduces the ELBO exactly on one machine; seeds differ by more). Tighten both on quiet
machines. The measurements behind these choices: results/README.md, "Does compare tell a
slowdown from noise?".

The gate fails closed: what it cannot compare is never a pass. A regression: a row of OLD
missing from NEW (unless --allow-removed), a table cut short mid-row, a number in OLD that is
NaN, infinite or (samples/s) zero in NEW, and two runs with no row in common. Undecided: a
drop beyond the threshold with too few windows to test, and a speed-up NEW cannot compute
because its yardstick row is missing or untimed (gate raw samples/s with --absolute
instead). Input that is not a results table at all (unreadable, a directory, a cell that
is not a number, a key twice) is refused with exit status 2.

Speed-ups over eager are a property of the CPU as well as of the code (results/README.md has
the same Numba code's on AMD and Intel CPUs). When the env.json beside each table
says the runs are from different CPUs (``provenance.cpu_difference``: model or instruction
sets), the throughput verdict is refused (undecided, said apart from the regressions)
unless --allow-machine-change; ELBO and agreement are compared either way.

Its modules: ``runs`` (the comparison and its verdicts), ``significance`` (the test),
``formats`` (text, Markdown, JSON). They are imported from there, not from this package, so
that ``vae-bench --help`` loads none of them (pandas).
"""
