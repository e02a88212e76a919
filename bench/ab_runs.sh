#!/bin/bash
# Same-run A/B of whole runs (issue 23): this checkout (A) against another source tree (B, e.g. a
# `git worktree add /tmp/b COMMIT`), alternated: the bundled sample three times each, then the
# 50-photo incremental run three times each, into copies of one output. Idle machine only; the
# CPU and load are printed with every line. Usage: bench/ab_runs.sh /tmp/b/src
set -euo pipefail
B=${1:?usage: bench/ab_runs.sh OTHER_SRC_DIR}
cd "$(dirname "$0")/.."
D=${FRUITS_DATASETS:-../shared/datasets}
echo "CPU:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
line () {  # $1 label, $2 output, $3 start, $4 end
  python3 -c "
import json; r = json.load(open('$2/report.json'))
print('$1', 'wall', round($4 - $3, 1), 'total', r['total_seconds'], r['stage_seconds'], 'load', open('/proc/loadavg').read().split()[0])"
}
sample () {  # $1 label, $2 PYTHONPATH
  rm -rf /tmp/ab-sample; s=$(date +%s.%N)
  PYTHONPATH=$2 .venv/bin/fruits run --output /tmp/ab-sample >/dev/null 2>&1; e=$(date +%s.%N)
  line "$1" /tmp/ab-sample "$s" "$e"
}
sample "warm-up A" ""; sample "warm-up B" "$B"
for _ in 1 2 3; do sample "sample A" ""; sample "sample B" "$B"; done
rm -rf /tmp/ab-in /tmp/ab-out0; cp -r src/fruits/sample_data/fruits-360-sample /tmp/ab-in
.venv/bin/fruits run --input /tmp/ab-in --output /tmp/ab-out0 >/dev/null 2>&1
for c in "Banana 1" "Kiwi 1" "Lemon 1" "Pear 1" "Orange 1"; do
  ls "$D/fruits-360-dev/Training/$c" | tail -10 | while read -r f; do
    cp "$D/fruits-360-dev/Training/$c/$f" "/tmp/ab-in/Training/$c/new_$f"; done
done
for _ in 1 2 3; do for v in A B; do
  p=""; [ $v = B ] && p=$B
  rm -rf /tmp/ab-out; cp -r /tmp/ab-out0 /tmp/ab-out; s=$(date +%s.%N)
  PYTHONPATH=$p .venv/bin/fruits run --input /tmp/ab-in --output /tmp/ab-out --incremental >/dev/null 2>&1
  e=$(date +%s.%N); line "incremental 50 $v" /tmp/ab-out "$s" "$e"
done; done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
