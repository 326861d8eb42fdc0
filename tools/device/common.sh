# Sourced by the device scripts: Duet from the unpacked .site (tools/device_pack.py), results under $OUT, and
# `bundle` at the end, because a call brings back only a few files from $OUT: everything goes into one tarball.
export PYTHONPATH=$PWD/.site:$PWD PYTHON=python3 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.csv"

bundle() {  # $OUT/* -> $OUT/results.tar.gz (plus the short summary files named, kept beside it)
  local keep=("$@") staging
  staging=$(mktemp -d)
  tar czf "$staging/results.tar.gz" -C "$OUT" .
  find "$OUT" -mindepth 1 -maxdepth 1 $(printf -- "-not -name %s " "${keep[@]}") -exec rm -rf {} +
  mv "$staging/results.tar.gz" "$OUT/" && rmdir "$staging"
}
