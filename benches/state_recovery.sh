#!/bin/bash
# Restart-to-caught-up after a kill with 100k readings of lag (release binary, local Tansu).
# Kept with the benches: run it by hand with the broker up (scripts/kafka-broker start).
set -u
B=${CARGO_TARGET_DIR:-$HOME/.cache/onad-stream/target}/release/onad-stream   # cargo build --release --bin onad-stream
N=recb-$(date +%s)
D=$(mktemp -d)
S=(--set "kafka.input_topic=\"$N-in\"" --set "kafka.scores_topic=\"$N-scores\"" --set "kafka.alerts_topic=\"$N-alerts\""
   --set "kafka.dead_letter_topic=\"$N-dead\"" --set "kafka.changelog_topic=\"$N-cl\"" --set "kafka.group_id=\"$N-g\""
   --set "state.path=\"$D\"" --set "kafka.session_timeout_ms=6000" --set "kafka.partitions=4")
$B topics create "${S[@]}" || exit 1
$B produce "${S[@]}" --count 100000 --sensors 1000 --rate 0 --seed 1 >/dev/null 2>&1 || exit 1
RUST_LOG=info $B run "${S[@]}" 2>/tmp/s-recb-run1.log & P=$!
$B tail "${S[@]}" --topic "$N-scores" --from-beginning --count 100000 --timeout-secs 300 >/dev/null 2>&1
echo "first run caught up; kill -9"
kill -9 $P; wait $P 2>/dev/null
$B produce "${S[@]}" --count 100000 --sensors 1000 --rate 0 --seed 2 >/dev/null 2>&1 || exit 1
T0=$(date +%s.%N)
RUST_LOG=info $B run "${S[@]}" 2>/tmp/s-recb-run2.log & P=$!
$B tail "${S[@]}" --topic "$N-scores" --from-beginning --count 200000 --timeout-secs 300 >/dev/null 2>&1
T1=$(date +%s.%N)
echo "restart to caught up (200k scores present): $(echo "$T1 - $T0" | bc) s"
kill -TERM $P; wait $P
grep -o "restored state.*" /tmp/s-recb-run2.log | head -4
du -sh $D
