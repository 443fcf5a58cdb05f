#!/usr/bin/env bash
# Instructions per request for every hot-path variant, by callgrind (see
# benches/instructions.rs). Needs valgrind. Prints a Markdown table: each
# variant's overhead over a bare request, and that overhead as a multiple of
# equal_work's (the same job by hand) and of AddAuthorization's (less work).
# propel_keyed is measured over tenant_tag_only: the same request, tagged.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench instructions --no-run >/dev/null 2>&1
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin=$(ls -t "$target"/release/deps/instructions-* | grep -v '\.d$' | head -1)
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
tagged=$(per_request tenant_tag_only)
equal=$(( $(per_request equal_work) - bare ))
floor=$(( $(per_request add_authorization) - bare ))
ratio() { awk -v o="$1" -v f="$2" 'BEGIN { if (o == 0) print ""; else printf "%.2f×", o / f }'; }
echo "| variant | instructions per request | overhead | × equal_work's | × AddAuthorization's |"
echo "|---|---:|---:|---:|---:|"
for variant in bare add_authorization equal_work propel_basic propel_cached tenant_tag_only propel_keyed propel_view hand_tokio_mutex hand_std_rwlock; do
  n=$(per_request "$variant")
  case "$variant" in
    propel_keyed) over=$(( n - tagged )); label="$variant (over tenant_tag_only)" ;;
    *) over=$(( n - bare )); label="$variant" ;;
  esac
  echo "| $label | $n | +$over | $(ratio "$over" "$equal") | $(ratio "$over" "$floor") |"
done
