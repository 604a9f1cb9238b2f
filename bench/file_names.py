"""The names of the files in a results directory, each in one place, for every command that
writes or reads them. Without imports, so the command line reads them without loading pandas."""

# A run's (run, merge, each run stage of gpu-check):
ENV = "env.json"  # what the numbers depend on besides the code; a run's marker
RESULTS = "results.csv"  # one row per backend, latent size and batch size
RESULTS_JSON = "results.json"  # the same rows with their windows, the provenance and the gate
GATE = "gate.csv"  # every tensor the gate compared
SUMMARY = "summary.md"  # a run's, or seeds', summary in Markdown
# A run's and an experiment's: one row per model (or backend) and epoch.
CURVES = "curves.csv"
# An experiment's (and seeds' provenance):
TABLE = "table.csv"  # one row per model
TABLE_MD = "table.md"
PROVENANCE = "provenance.json"
# seeds':
SEED_RUNS = "runs.csv"
COMPARISON = "comparison.csv"
# gpu-check's:
TARGETS = "targets.md"
SMOKE = "smoke.txt"
GPU_TESTS = "gpu-tests.txt"
# report's:
REPORT = "report.html"
