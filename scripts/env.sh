# Sourced by the scripts: shared build settings.
# Build artefacts live outside the clone so that fresh clones (CI) reuse the compiled
# librdkafka and RocksDB instead of spending minutes rebuilding them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onad-stream/target}"
# Clones and worktrees sharing that directory share the generated protobuf code too (same
# package, same OUT_DIR): build.rs re-runs when this differs from the last run's, so each
# build compiles its own tree's proto/ (a changed .proto in one worktree is otherwise missed).
export ONAD_WORKTREE="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
