#!/usr/bin/env bash
# Instructions per request for every hot-path variant, by callgrind (see
# benches/instructions.rs). Needs valgrind. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench instructions --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
count() { # variant n -> total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_request() { # variant -> instructions per request
  local small large
  small=$(count "$1" 2000)
  large=$(count "$1" 12000)
  echo $(( (large - small) / 10000 ))
}
bare=$(per_request bare)
floor=$(( $(per_request add_authorization) - bare ))
echo "| variant | instructions per request | over bare | × AddAuthorization's |"
echo "|---|---:|---:|---:|"
for variant in bare add_authorization propel_basic propel_cached propel_cached_replay tenant_tag_only propel_keyed hand_tokio_mutex hand_std_rwlock; do
  n=$(per_request "$variant")
  over=$(( n - bare ))
  ratio=$(awk -v o="$over" -v f="$floor" 'BEGIN { if (o == 0) print ""; else printf "%.2f×", o / f }')
  echo "| $variant | $n | +$over | $ratio |"
done
