// Same switch as `rt::build::image_cfg`, which this crate's own build script cannot call.
fn main() {
    println!("cargo:rerun-if-env-changed=MICROHV_IMAGE");
    println!("cargo::rustc-check-cfg=cfg(image)");
    if std::env::var_os("MICROHV_IMAGE").is_some() {
        println!("cargo:rustc-cfg=image");
    }
}
