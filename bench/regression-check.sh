#!/usr/bin/env bash
# A pull request's regression check, in one CI job on one machine: the base commit and the
# checked-out commit measured by the same `vae-bench run`, one after the other, then
# `vae-bench compare` of the two (its exit status: 0 no regression, 1 a regression, 3
# undecided, 2 bad input) with its Markdown for the pull-request comment.
#
#   bench/regression-check.sh BASE OUT [vae-bench run options...]
#
# BASE: a commit, branch or tag (origin/main); OUT: a new directory for base/ and head/ (run
# directories) and compare.md. The options go to both runs (default: the quick profile's
# data and epochs at z = 20 with 9 windows per row, enough for compare's significance test).
# Both commits run in this environment (the checkout's dependencies): the base from a
# temporary `git worktree`, so each run imports its own commit's code (env.json's git_commit
# says which). Throughput is compared as each backend's speed-up over PyTorch eager in the
# same run, which cancels most of what the machine does between the two runs.
#
# GitHub Actions (tests/bench/test_regression_check.py runs this script on two commits):
#
#   on: pull_request
#   jobs:
#     speed:
#       runs-on: ubuntu-latest
#       steps:
#         - uses: actions/checkout@v4
#           with: {fetch-depth: 0}
#         - uses: actions/setup-python@v5
#           with: {python-version: "3.12"}
#         - run: pip install torch==2.13.0 -e ".[jax]"
#         - run: bench/regression-check.sh "origin/$GITHUB_BASE_REF" regression --backends torch numba
#         - if: always()
#           run: gh pr comment "${{ github.event.number }}" --body-file regression/compare.md
#           env: {GH_TOKEN: "${{ github.token }}"}
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 BASE OUT [vae-bench run options...]" >&2
    exit 2
fi
base=$1
out=$2
shift 2
if [ $# -eq 0 ]; then
    set -- --latents 20 --repeats 9
fi
root=$(git rev-parse --show-toplevel)
if ! git -C "$root" rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
    echo "$0: $base is not a commit here (fetch it first: actions/checkout's fetch-depth: 0)" >&2
    exit 2
fi
if [ -e "$out" ]; then
    echo "$0: $out exists; give a new directory" >&2
    exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
tree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tree/base" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
git -C "$root" worktree add --detach --quiet "$tree/base" "$base"

# The same command at both commits, the base first; `python -m bench` from a commit's own
# directory imports that commit's packages before the installed ones.
(cd "$tree/base" && python -m bench run --quiet --out "$out/base" "$@")
(cd "$root" && python -m bench run --quiet --out "$out/head" "$@")

status=0
(cd "$root" && python -m bench compare "$out/base" "$out/head" --format markdown) \
    >"$out/compare.md" || status=$?
cat "$out/compare.md"
exit "$status"
