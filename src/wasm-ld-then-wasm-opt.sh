#!/bin/sh
# The linker wasm-component-ld runs for the component (set by build.rs): wasm-ld, then Binaryen's
# `wasm-opt -Oz` on the linked core module, before wasm-component-ld wraps it into the component.
#
# This is the one moment the core module exists on its own; optimising it here keeps
# `cargo build` and `spin build` the only build commands (issue 12: about a fifth of the code).
# Without wasm-opt (`apt-get install binaryen`, or `npm i -g binaryen`; WASM_OPT names another
# binary) the module is left as linked, and the component is larger but the same program.
set -eu
# build.rs names the toolchain's wasm-ld (GCB_WASM_LD); else the one on PATH.
"${GCB_WASM_LD:-wasm-ld}" "$@"
out=""
previous=""
for arg in "$@"; do
  [ "$previous" = "-o" ] && out="$arg"
  previous="$arg"
done
opt="${WASM_OPT:-wasm-opt}"
if [ -n "$out" ] && command -v "$opt" >/dev/null 2>&1; then
  # Exactly the features rustc's wasm32-wasip2 target emits: wasm-opt refuses a module that
  # uses anything else, and never introduces what is not listed. A wasm-opt that fails leaves
  # the module as linked (a larger component, the same program); CI's size cap notices.
  if "$opt" -Oz \
    --enable-bulk-memory --enable-mutable-globals --enable-sign-ext \
    --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types \
    "$out" -o "$out.opt"; then
    mv "$out.opt" "$out"
  else
    rm -f "$out.opt"
    echo "wasm-ld-then-wasm-opt.sh: $opt failed; the component is not size-optimised" >&2
  fi
fi
