#!/bin/sh
# Creates an empty source file for every build target that Cargo.toml declares or that
# Cargo would look for (src/main.rs, src/lib.rs, and the `path`s or conventional places of
# [[bin]], [[bench]], [[test]] and [[example]] sections), so that `cargo build` can compile
# the dependencies alone before the real sources are copied: the container image's
# dependency caching layer. Existing files are left alone. The members of a
# `[workspace]` whose Cargo.toml is present get their stand-ins too (the image copies each
# member's manifest). POSIX sh + awk only.
# Usage: cargo-stub-targets.sh [DIR]   (DIR holds Cargo.toml; default: .)
set -eu
cd "${1:-.}"
[ -f Cargo.toml ] || { echo "cargo-stub-targets: no Cargo.toml in $(pwd)" >&2; exit 1; }

# stub_package DIR: stand-ins for the targets of DIR/Cargo.toml.
stub_package() (
cd "$1"
awk '
  function flush() {
    if (kind == "") return
    if (path != "") print path
    else if (kind == "lib") print "src/lib.rs"
    else if (kind == "bin" && name != "") print "src/bin/" name ".rs"
    else if (kind == "bench" && name != "") print "benches/" name ".rs"
    else if (kind == "test" && name != "") print "tests/" name ".rs"
    else if (kind == "example" && name != "") print "examples/" name ".rs"
  }
  /^[[:space:]]*\[/ {
    flush(); kind = ""; name = ""; path = ""
    if ($0 ~ /^[[:space:]]*\[lib\]/) kind = "lib"
    else if (match($0, /^[[:space:]]*\[\[(bin|bench|test|example)\]\]/)) {
      kind = $0; sub(/^[[:space:]]*\[\[/, "", kind); sub(/\]\].*$/, "", kind)
    }
    next
  }
  kind != "" && /^[[:space:]]*name[[:space:]]*=/ {
    v = $0; sub(/^[^"]*"/, "", v); sub(/".*$/, "", v); name = v
  }
  kind != "" && /^[[:space:]]*path[[:space:]]*=/ {
    v = $0; sub(/^[^"]*"/, "", v); sub(/".*$/, "", v); path = v
  }
  END { flush() }
' Cargo.toml | { cat; echo src/main.rs; echo src/lib.rs; } | sort -u | while read -r target; do
  [ -e "$target" ] && continue
  mkdir -p "$(dirname "$target")"
  case "$target" in
    src/lib.rs) : >"$target" ;;
    *) echo 'fn main() {}' >"$target" ;;
  esac
done
)

stub_package .
# Workspace members: the quoted paths of `members = [...]` (on one line) in [workspace].
awk '
  /^[[:space:]]*\[/ { ws = ($0 ~ /^[[:space:]]*\[workspace\]/) }
  ws && /^[[:space:]]*members[[:space:]]*=/ {
    line = $0
    while (match(line, /"[^"]*"/)) {
      print substr(line, RSTART + 1, RLENGTH - 2)
      line = substr(line, RSTART + RLENGTH)
    }
  }
' Cargo.toml | while read -r member; do
  [ "$member" = "." ] && continue
  if [ -f "$member/Cargo.toml" ]; then
    stub_package "$member"
  else
    echo "cargo-stub-targets: workspace member $member has no Cargo.toml here; copy it first" >&2
    exit 1
  fi
done
