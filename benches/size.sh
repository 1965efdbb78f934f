#!/usr/bin/env bash
# The release component's size by crate and by largest function (wasm-tools + twiggy).
#
#   cargo install wasm-tools twiggy --locked   # once
#   bash benches/size.sh
#
# Builds the release component with symbol names kept (strip = false; same code otherwise) and
# without the link step's wasm-opt (which drops the names; WASM_OPT=none), takes its core module
# out of the component, drops DWARF, and attributes each function's bytes to the crate its name
# starts with. The shipped component is the same code after `wasm-opt -Oz`: about a fifth smaller
# across the board, so the shares hold. A generic instantiated for our types is counted under the
# crate that defines the generic (serde_json's deserialize_struct for our models, alloc's BTreeMap).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wasm-tools twiggy python3; do
  command -v "$tool" >/dev/null || { echo "size.sh: $tool is missing (cargo install wasm-tools twiggy --locked)" >&2; exit 2; }
done
target="${CARGO_TARGET_DIR:-target}/size-names"
WASM_OPT=none CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR="$target" cargo build --release --target wasm32-wasip2 --lib --quiet
shipped="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/gong_crm_bridge.wasm"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
wasm-tools component unbundle --module-dir "$work" --threshold 0 "$target/wasm32-wasip2/release/gong_crm_bridge.wasm" -o "$work/shell.wasm"
core="$(ls -S "$work"/unbundled-module*.wasm | head -1)"
wasm-tools strip -d '\.debug.*' "$core" -o "$work/core.wasm"
[ -f "$shipped" ] && echo "shipped component (strip = true): $(stat -c %s "$shipped") bytes"
echo "core module before wasm-opt, with names, without DWARF: $(stat -c %s "$work/core.wasm") bytes"
echo
echo "by crate:"
twiggy top -n 1000000 -f csv "$work/core.wasm" > "$work/top.csv"
python3 - "$work/top.csv" <<'PY'
import collections, csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by_crate, total = collections.Counter(), 0
for row in rows:
    name, size = row["Name"], int(row["ShallowSize"])
    total += size
    if name.startswith("custom section") or 'names" subsection' in name:
        key = "(symbol names: not shipped)"
    elif name.startswith("data segment"):
        key = "(" + name + ")"
    else:
        bare = re.sub(r"^(mut |dyn |impl )", "", name.lstrip("<&*( "))
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", bare)
        key = match.group(0) if match else "(other)"
        if key == "gong_crm_bridge":
            module = re.match(r"gong_crm_bridge::([a-z_]+)", bare)
            key += "::" + (module.group(1) if module else "?")
    by_crate[key] += size
for key, size in by_crate.most_common(30):
    print(f"{size:9d}  {100 * size / total:5.1f}%  {key}")
PY
echo
echo "largest functions:"
twiggy top -n 20 "$work/core.wasm" | grep -v "names\" subsection\|data segment"
