#!/bin/sh
# Seeds fuzz/seeds/bgp_wire from the captured router messages (mode byte 0x01: 4-octet AS).
set -eu
cd "$(dirname "$0")"
mkdir -p seeds/bgp_wire
for f in ../config/tests/fixtures/bgp/*.hex; do
    { printf '\001'; tr -d ' \n' < "$f" | xxd -r -p; } > "seeds/bgp_wire/$(basename "$f" .hex)"
done
