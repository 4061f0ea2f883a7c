// Compiles proto/ with protox (a protobuf compiler in Rust), so no system `protoc` is needed.
fn main() {
    let files = ["horizon/v1/events.proto", "horizon/v1/history.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."]).expect("proto/ does not compile");
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)
        .expect("prost code generation failed");
}
