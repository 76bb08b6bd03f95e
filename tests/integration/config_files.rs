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

/// What `cargo leptos watch` / `serve` / `build` need from Cargo.toml, checked without cargo-leptos: one server
/// binary (two `[[bin]]`s without `bin-target` make it refuse to start), a library it can build for the browser
/// (`cdylib`), the features and profile it is told to use, and the files and directories it is pointed at.
#[test]
fn cargo_leptos_metadata_is_consistent() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest: toml::Table = toml::from_str(include_str!("../../Cargo.toml")).expect("Cargo.toml parses");
    let leptos = manifest["package"]["metadata"]["leptos"].as_table().expect("[package.metadata.leptos]");
    let text =
        |key: &str| leptos.get(key).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("leptos.{key} is missing"));
    let list = |key: &str| -> Vec<String> {
        leptos[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    };

    let bins = manifest.get("bin").and_then(|b| b.as_array()).cloned().unwrap_or_default();
    let bin_names: Vec<&str> = bins.iter().filter_map(|b| b["name"].as_str()).collect();
    match leptos.get("bin-target").and_then(|t| t.as_str()) {
        Some(target) => assert!(bin_names.contains(&target), "bin-target {target} is not a [[bin]]: {bin_names:?}"),
        None => assert_eq!(bin_names.len(), 1, "cargo-leptos refuses several [[bin]]s without bin-target"),
    }
    let features = manifest["features"].as_table().expect("[features]");
    for key in ["bin-features", "lib-features"] {
        for feature in list(key) {
            assert!(features.contains_key(&feature), "{key} names {feature}, which [features] lacks");
        }
    }
    for bin in &bins {
        for needed in bin.get("required-features").and_then(|f| f.as_array()).into_iter().flatten() {
            let needed = needed.as_str().unwrap().to_owned();
            assert!(list("bin-features").contains(&needed), "the server binary needs {needed}, not in bin-features");
        }
    }
    let crate_types: Vec<&str> =
        manifest["lib"]["crate-type"].as_array().unwrap().iter().filter_map(|t| t.as_str()).collect();
    assert!(crate_types.contains(&"cdylib") && crate_types.contains(&"rlib"), "{crate_types:?}");
    let profile = text("lib-profile-release");
    assert!(manifest["profile"].as_table().unwrap().contains_key(profile), "profile {profile} is not defined");
    for key in ["style-file", "assets-dir", "end2end-dir"] {
        let path = std::path::Path::new(root).join(text(key));
        assert!(path.exists(), "leptos.{key} = {} does not exist", path.display());
    }
    // `end2end-cmd` runs in `end2end-dir`: `npm test` needs a test script there.
    assert_eq!(text("end2end-cmd"), "npm test");
    let package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/{}/package.json", text("end2end-dir"))).unwrap())
            .unwrap();
    assert!(package["scripts"]["test"].is_string(), "end2end/package.json has no test script");
}
