//! The modules of `src/` import only downward: no module reaches one that reaches back
//! (README's Hacking section lists the layers). Read off the sources, tests left out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module and the modules it names (`crate::x`), `main` for the crate root's items.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    let mut graph = BTreeMap::new();
    for m in &modules {
        let text = std::fs::read_to_string(src.join(format!("{m}.rs"))).unwrap();
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        let mut deps = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let dep = if modules.contains(&name) {
                name
            } else {
                "main".into()
            };
            if &dep != m {
                deps.insert(dep);
            }
        }
        graph.insert(m.clone(), deps);
    }
    graph
}

#[test]
fn modules_import_only_downward() {
    let graph = imports();
    // Depth-first from every module; a module met again on the current path is a cycle.
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        let here = path.last().unwrap().clone();
        for dep in graph.get(&here).into_iter().flatten() {
            if let Some(at) = path.iter().position(|p| p == dep) {
                cycles.push(format!("{} -> {dep}", path[at..].join(" -> ")));
            } else {
                path.push(dep.clone());
                walk(graph, path, cycles);
                path.pop();
            }
        }
    }
    let mut cycles = Vec::new();
    for m in graph.keys() {
        walk(&graph, &mut vec![m.clone()], &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
    // The crate root is the top: nothing reaches back into main.rs.
    let into_main: Vec<&String> = graph
        .iter()
        .filter(|(m, deps)| *m != "main" && deps.contains("main"))
        .map(|(m, _)| m)
        .collect();
    assert!(into_main.is_empty(), "modules using main.rs: {into_main:?}");
}
