#!/bin/bash
# bench/out/demo15/run.sh NAME [CLI args...]: one timed demo, empty score cache, converted model cached.
name=$1; shift
cd /work/wt-demo15
rm -rf /tmp/demo15_cache_$name /tmp/demo15_out_$name; mkdir -p /tmp/demo15_cache_$name
{ echo "start $(date -u +%FT%TZ) $(cat /proc/loadavg)"; } > bench/out/demo15/$name.log
TUNEWISE_CACHE=/tmp/demo15_cache_$name TUNEWISE_MODEL_CACHE=$HOME/.cache/tunewise/models PYTHONPATH=src \
  nice -n 5 /usr/bin/time -v /work/main/.venv/bin/python bench/demo_stages.py -o bench/out/demo15/$name.json -- \
  demo -o /tmp/demo15_out_$name "$@" >> bench/out/demo15/$name.log 2>&1
echo "end $(date -u +%FT%TZ) $(cat /proc/loadavg)" >> bench/out/demo15/$name.log
