# Sourced by the scripts: shared build settings.
# Build artefacts live outside the clone so that fresh clones (CI) reuse the compiled
# librdkafka and RocksDB instead of spending minutes rebuilding them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onad-stream/target}"
