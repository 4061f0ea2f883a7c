// Compiles proto/ with protox (a protobuf compiler in Rust), so no system `protoc` is needed.
fn main() {
    let files = ["horizon/v1/events.proto", "horizon/v1/history.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."]).expect("proto/ does not compile");
    // The descriptors ship with the crate: the codec checks payloads for fields this build does
    // not know against them (`horizon_core::schema`).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("descriptors.bin"), prost::Message::encode_to_vec(&descriptors)).expect("writing descriptors.bin");
    prost_build::Config::new()
        .bytes(["."])
        .enable_type_names()
        .compile_fds(descriptors)
        .expect("prost code generation failed");
}
