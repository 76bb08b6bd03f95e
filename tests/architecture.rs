//! Dependencies point one way: no import cycle among the top-level modules of `src/` (issue 17). A module depends
//! on another when any of its files names `crate::<other>`; the test fails, naming the modules, when a change ties
//! two or more of them into a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `module → modules it names`, from every `.rs` file under `src/` (the binary and crate root excluded).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let first = relative.components().next().expect("a component").as_os_str().to_string_lossy();
            let module = first.trim_end_matches(".rs").to_owned();
            if ["main", "lib", "bin"].contains(&module.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read file");
            let names = graph.entry(module.clone()).or_default();
            for (at, _) in text.match_indices("crate::") {
                let rest = &text[at + "crate::".len()..];
                // `crate::a::b` names `a`; `crate::{a, b::c}` names `a` and `b`.
                let listed = match rest.strip_prefix('{') {
                    Some(list) => list.split('}').next().unwrap_or_default().split(',').collect::<Vec<_>>(),
                    None => vec![rest],
                };
                for path in listed {
                    let name: String =
                        path.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() && name != module {
                        names.insert(name);
                    }
                }
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for names in graph.values_mut() {
        names.retain(|name| modules.contains(name));
    }
    graph
}

/// The groups of modules that reach each other (strongly connected components of more than one module).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reaches = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(module) = todo.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|m| (m, reaches(m))).collect();
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for module in graph.keys() {
        let group: BTreeSet<String> = graph
            .keys()
            .filter(|other| reach[module].contains(*other) && reach[*other].contains(module))
            .cloned()
            .collect();
        if group.len() > 1 && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

#[test]
fn no_import_cycle_among_top_level_modules() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 10, "the modules were not found: {graph:?}");
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles between top-level modules of src/: {found:?}\ngraph: {graph:#?}");
}

#[test]
fn the_check_finds_a_cycle_when_there_is_one() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
        ("d".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into_iter()
    .collect();
    assert_eq!(cycles(&graph), [BTreeSet::from(["a".to_owned(), "b".to_owned(), "c".to_owned()])]);
}
