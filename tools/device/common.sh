# Sourced by the device scripts: Duet from the unpacked .site (tools/device_pack.py), results under $OUT, a summary
# of what ran, and `bundle` at the end, because a call brings back only a few files from $OUT: everything goes into
# one tarball beside the summary.
# The machine's copy of the repo may carry a stale .git: the commit in benchmark rows must come from here.
: "${DUET_COMMIT:?export DUET_COMMIT=<short hash of this checkout> so that benchmark rows name what ran}"
export PYTHONPATH=$PWD/.site:$PWD PYTHON=python3 PYTHONUNBUFFERED=1 DUET_CONFIG=$PWD/bot_config.toml
if [ -d .site/_fa4 ]; then  # the optional fa4 attention backend (tools/fa4_pack.sh); the .pth that would add the
  export PYTHONPATH=$PWD/.site/_fa4:$PWD/.site/_fa4/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH  # DSL is not read here
fi
if [ -d .site/_fa3 ]; then  # the optional fa3 / fa3_fp8 attention backends (tools/fa3_build.sh)
  export PYTHONPATH=$PWD/.site/_fa3:$PYTHONPATH
fi
mkdir -p "$OUT" var
summary=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.csv"
SAMPLE_PHOTOS=(--photo-a bot/samples/grace_hopper.jpg --photo-b bot/samples/astronaut.png)

duet() { python3 -m bot "$@"; }

logged() {  # name, time limit, command…: its output to $OUT/name.txt, "name rc=N" to the summary
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name rc=$?" >> "$summary"
}

wait_for_jobs() {  # time limit, job ids…: until every job has finished (or the limit), then each one's state
  local limit=$1 id; shift
  SECONDS=0
  for id in "$@"; do
    until duet queue show "$id" --json | grep -qE '"state": "(succeeded|failed|dead|cancelled)"'; do
      [ $SECONDS -gt "$limit" ] && break; sleep 2
    done
  done
  for id in "$@"; do
    echo "job $id: $(duet queue show "$id" --json | grep -oE '"state": "[a-z]+"') after ${SECONDS}s" >> "$summary"
    duet queue show "$id" --json > "$OUT/job_${id:0:8}.json"
  done
}

mp4_report() {  # MP4 paths…: video codec, rate, size and frames, audio codec, duration of each, to the summary
  python3 - "$@" >> "$summary" 2>&1 <<'PY'
import sys, av
for path in sys.argv[1:]:
    with av.open(path) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        print(path, v.codec_context.name, v.average_rate, v.width, v.height, v.frames, a.codec_context.name, c.duration / 1e6)
PY
}

profile_summary() {  # engine.bench --profile JSONs…: each rank's GPU time and share per kernel class, to the summary
  python3 - "$@" >> "$summary" <<'PY'
import json, sys
for path in sys.argv[1:]:
    for result in json.load(open(path)):
        print(path.rsplit("/", 1)[-1], result["size"], "rank", result.get("rank", 0), result["gpu_ms_total"], "ms",
              result["share_by_class"])
PY
}

bundle() {  # $OUT/* -> $OUT/results.tar.gz (plus the short summary files named, kept beside it)
  local keep=("$@") staging
  staging=$(mktemp -d)
  tar czf "$staging/results.tar.gz" -C "$OUT" .
  find "$OUT" -mindepth 1 -maxdepth 1 $(printf -- "-not -name %s " "${keep[@]}") -exec rm -rf {} +
  mv "$staging/results.tar.gz" "$OUT/" && rmdir "$staging"
}
