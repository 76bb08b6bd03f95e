// `sqlx::migrate!()` embeds `migrations/` at compile time; without this, cargo would not rebuild when a new
// migration file is added.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
