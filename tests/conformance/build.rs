fn main() {
    rt::build::link_freestanding_bins();
}
