//! Leptos.toml (runtime) and Cargo.toml (build) name the same site; they must never drift apart.

use leptos_config::get_config_from_str;

#[test]
fn leptos_toml_and_cargo_metadata_agree_on_the_shared_keys() {
    let runtime = get_config_from_str(include_str!("../../Leptos.toml")).expect("Leptos.toml parses");
    let build = get_config_from_str(include_str!("../../Cargo.toml")).expect("Cargo.toml metadata parses");
    assert_eq!(runtime.output_name, build.output_name, "output-name");
    assert_eq!(runtime.site_root, build.site_root, "site-root");
    assert_eq!(runtime.site_pkg_dir, build.site_pkg_dir, "site-pkg-dir");
    assert_eq!(runtime.site_addr, build.site_addr, "site-addr");
    assert_eq!(runtime.reload_port, build.reload_port, "reload-port");
    assert_eq!(&*runtime.output_name, env!("LEPTOS_OUTPUT_NAME"), ".cargo/config.toml LEPTOS_OUTPUT_NAME");
}
