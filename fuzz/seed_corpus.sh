#!/bin/sh
# Seeds fuzz/seeds/bgp_wire from the captured router messages (mode byte 0x01: 4-octet AS).
set -eu
cd "$(dirname "$0")"
mkdir -p seeds/bgp_wire
for f in ../config/tests/fixtures/bgp/*.hex; do
    { printf '\001'; tr -d ' \n' < "$f" | xxd -r -p; } > "seeds/bgp_wire/$(basename "$f" .hex)"
done
# Seeds fuzz/seeds/l2_frames from the captured layer-2 frames (config/src/wire/fixtures.rs),
# each with selector 0 (target not announced) and 1 (target announced).
mkdir -p seeds/l2_frames
tr -s ' \n' ' ' < ../config/src/wire/fixtures.rs | grep -o 'pub const [A-Z0-9_]*: &str = "[0-9a-f]*"' |
while read -r _ _ name _ _ hex; do
    name=$(echo "$name" | tr -d ':' | tr 'A-Z' 'a-z')
    hex=$(echo "$hex" | tr -d '"')
    for sel in 0 1; do
        { printf "\\00$sel"; echo "$hex" | xxd -r -p; } > "seeds/l2_frames/${name}_$sel"
    done
done
