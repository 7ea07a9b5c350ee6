#!/usr/bin/env bash
# Assembles the fuzz corpora in fuzz/corpus/<target>/ from what the repository and shared/
# already hold, without committing copies: the captured Omaha messages in
# ../shared/testdata/omaha/ (PLATTE_SHARED overrides the shared/ directory), the code blocks of
# docs/*/*.md (TOML drop-ins, JSON bodies, XML), the vendor defaults drop-in, and the small
# generated seeds in fuzz/seeds/<target>/. Files are named by their SHA-1 as libFuzzer names its
# own, so running it again adds nothing twice and keeps what the fuzzer found.
# usage: fuzz/seed.sh
set -euo pipefail
fuzz=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$fuzz")
shared=${PLATTE_SHARED:-$repo/../shared}
corpus=$fuzz/corpus

add() { # add TARGET FILE: copy FILE into TARGET's corpus under its SHA-1
  local sum
  sum=$(sha1sum "$2" | cut -d' ' -f1)
  mkdir -p "$corpus/$1"
  cp "$2" "$corpus/$1/$sum"
}
add_bytes() { # add_bytes TARGET: stdin becomes one corpus file
  local tmp
  tmp=$(mktemp)
  cat > "$tmp"
  [ -s "$tmp" ] && add "$1" "$tmp"
  rm -f "$tmp"
}
blocks() { # blocks LANG: each ```LANG block of docs/*/*.md, NUL-separated
  awk -v lang="$1" '
    $0 == "```" lang { inblock = 1; next }
    inblock && /^```/ { inblock = 0; printf "%c", 0; next }
    inblock { print }' "$repo"/docs/*/*.md
}

for t in omaha_request omaha_response payload_prefix payload_delta agent_config fleetlock_body admin_json version_order crau_header; do
  mkdir -p "$corpus/$t"
  if [ -d "$fuzz/seeds/$t" ]; then
    for f in "$fuzz/seeds/$t"/*; do add "$t" "$f"; done
  fi
done

# Omaha: every captured message goes to the target of its kind, the others to both.
if [ -d "$shared/testdata/omaha" ]; then
  for f in "$shared"/testdata/omaha/*.xml; do
    case $(basename "$f") in
      *-request-*) add omaha_request "$f" ;;
      *-response-*) add omaha_response "$f" ;;
      *) add omaha_request "$f"; add omaha_response "$f" ;;
    esac
  done
else
  echo "seed.sh: $shared/testdata/omaha not found; Omaha corpora start from the docs only" >&2
fi
while IFS= read -r -d '' block; do
  printf '%s' "$block" | add_bytes omaha_request
  printf '%s' "$block" | add_bytes omaha_response
done < <(blocks xml)

# Agent configuration: the vendor defaults as shipped and with every key uncommented, and every
# TOML block of the docs; one legacy update.conf in front of each (input: update.conf NUL toml).
defaults=$repo/systemd/agent.d/00-defaults.toml
add agent_config "$defaults"
sed -E 's/^# ([a-z_.]+ = )/\1/' "$defaults" | add_bytes agent_config
while IFS= read -r -d '' block; do
  printf '%s' "$block" | add_bytes agent_config
  printf 'GROUP=beta\nSERVER=https://updates.example.com/v1/update/\n\0%s' "$block" | add_bytes agent_config
done < <(blocks toml)

# Admin bodies: every JSON block of the docs as each body type (the first byte selects it).
while IFS= read -r -d '' block; do
  for sel in 0 1 2 3 4 5 6; do
    { printf "\\$(printf '%03o' "$sel")"; printf '%s' "$block"; } | add_bytes admin_json
  done
done < <(blocks json)

for t in "$corpus"/*; do
  printf '%-16s %4d inputs\n' "$(basename "$t")" "$(find "$t" -type f | wc -l)"
done
