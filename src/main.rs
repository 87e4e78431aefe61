//! The `onad-stream` binary: parse the command line, set up telemetry, run a subcommand.

fn main() -> anyhow::Result<()> {
    onad_stream::cli::main()
}
