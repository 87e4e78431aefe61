//! Compiles `proto/onad/v1/*.proto` with prost-build, using protox as the parser so that no
//! system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/onad/v1/readings.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        // JSON views (`tail`, `score`) serialize the wire types directly.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        // Sorted maps: stable JSON output and a fixed feature order for free.
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
