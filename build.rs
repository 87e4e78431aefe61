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
    // librocksdb-sys links a prebuilt static RocksDB when ROCKSDB_LIB_DIR and ROCKSDB_STATIC
    // are set (skipping its ~10 minute C++ build) but then does not link the C++ runtime
    // that the library needs; do it here so that such builds link.
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=ROCKSDB_STATIC");
    if std::env::var_os("ROCKSDB_LIB_DIR").is_some() && std::env::var_os("ROCKSDB_STATIC").is_some() {
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }
    Ok(())
}
