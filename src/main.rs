fn main() {
    println!("pbsfs: under construction");
}
