fn main() {
    rt::build::image_cfg();
}
