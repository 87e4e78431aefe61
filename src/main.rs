//! The `onad-stream` binary: parse the command line, set up telemetry, run a subcommand.

/// Counts each thread's heap bytes, so that the memory budget charges every sensor what its
/// pipeline really holds (`ops::heap`).
#[global_allocator]
static ALLOC: onad_stream::ops::heap::CountingAlloc = onad_stream::ops::heap::CountingAlloc;

fn main() -> anyhow::Result<()> {
    // Before any thread starts: glibc's arenas are capped so that freed memory is reused
    // across threads (`ops::malloc`).
    onad_stream::ops::malloc::tune();
    onad_stream::cli::main()
}
