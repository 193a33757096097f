#!/usr/bin/env bash
# Run one evidence study from its own git worktree at a fixed commit, so that other work on the
# checkout cannot change the code under a study that runs for hours.
#
#   bench/run_study.sh STUDY [COMMIT] -- COMMAND [ARGS...]
#   bench/run_study.sh study_curves -- python bench/study_curves.py --out bench/out/study_curves --metric choice
#
# - The worktree is $STUDY_ROOT/study-STUDY-<commit> (STUDY_ROOT defaults to the checkout's parent
#   folder), created once (detached) and reused: rerunning the same line resumes, because every
#   study script skips the fine-tunes and evaluations already on disk.
# - Results land in THIS checkout's bench/out/STUDY (the worktree's bench/out/STUDY links there).
#   The first run pins the study to its commit (bench/out/STUDY/commit); a later run at another
#   commit is refused (exit 2), so one study's results never mix two versions of the code.
# - COMMAND runs in the worktree with `nice` (NICE, default 10), one thread (OMP/MKL/torch and
#   TUNEWISE_THREADS=1), PYTHONPATH on the worktree's src/ and bench/, and `python` on PATH being
#   PYTHON's (default: this checkout's .venv). Each run appends a JSON line to
#   bench/out/STUDY/runs.jsonl when it starts and again when it ends: commit, command, start, wall
#   seconds and exit code (null in the start line), host; its output
#   goes to bench/out/STUDY/run.log as well as the terminal.
set -euo pipefail

usage() {
  echo "usage: bench/run_study.sh STUDY [COMMIT] -- COMMAND [ARGS...]" >&2
  exit 2
}

[[ $# -ge 3 ]] || usage
study=$1
shift
[[ $study =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "run_study: the study name may hold letters, digits, '_', '.' and '-' only" >&2; exit 2; }
commit=HEAD
if [[ $1 != -- ]]; then
  commit=$1
  shift
fi
[[ $# -ge 2 && $1 == -- ]] || usage
shift

repo=$(git rev-parse --show-toplevel)
sha=$(git -C "$repo" rev-parse --verify --quiet "$commit^{commit}") || {
  echo "run_study: '$commit' is not a commit of $repo" >&2
  exit 2
}
out=$repo/bench/out/$study
mkdir -p "$out"
if [[ -f $out/commit && $(cat "$out/commit") != "$sha" ]]; then
  echo "run_study: $out holds results of commit $(cat "$out/commit"), not $sha;" \
    "rerun with that commit, or use a new study name" >&2
  exit 2
fi
echo "$sha" >"$out/commit"

tree=${STUDY_ROOT:-$(dirname "$repo")}/study-$study-${sha:0:12}
if [[ ! -d $tree ]]; then
  git -C "$repo" worktree add --detach "$tree" "$sha" >&2
fi
# The study writes into this checkout's results folder, and finds the virtual environment where
# the scripts expect it.
mkdir -p "$tree/bench/out"
if [[ ! -L $tree/bench/out/$study ]]; then
  rm -rf "${tree:?}/bench/out/$study"
  ln -s "$out" "$tree/bench/out/$study"
fi
python=${PYTHON:-$repo/.venv/bin/python}
[[ -x $python ]] || { echo "run_study: no Python at $python (set PYTHON)" >&2; exit 2; }
venv=$(dirname "$(dirname "$python")")
[[ -e $tree/.venv ]] || ln -s "$venv" "$tree/.venv"

# One JSON line when the run starts (wall_seconds and exit_code null) and one when it ends: a run
# killed with its session (it never reaches the end) still leaves its command and commit behind.
record() {
  "$python" - "$out/runs.jsonl" "$study" "$sha" "$tree" "$started" "$1" "$2" "${command[@]}" <<'PY'
import json, platform, shlex, sys

path, study, sha, tree, started, wall, status, *command = sys.argv[1:]
record = {"study": study, "commit": sha, "worktree": tree, "command": shlex.join(command), "started": started,
          "wall_seconds": int(wall) if wall else None, "exit_code": int(status) if status else None,
          "host": platform.node()}
with open(path, "a", encoding="utf-8") as handle:
    handle.write(json.dumps(record) + "\n")
PY
}

command=("$@")
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
start_seconds=$(date +%s)
record "" ""
set +e
(
  cd "$tree"
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TUNEWISE_THREADS=1 OMP_WAIT_POLICY=PASSIVE
  export PYTHONPATH="$tree/src:$tree/bench" PATH="$venv/bin:$PATH"
  exec nice -n "${NICE:-10}" "$@"
) 2>&1 | tee -a "$out/run.log"
status=${PIPESTATUS[0]}
set -e
wall=$(($(date +%s) - start_seconds))

record "$wall" "$status"
echo "run_study: $study at ${sha:0:12}: exit $status after ${wall} s (recorded in $out/runs.jsonl)" >&2
exit "$status"
