//! The module layering docs/contributing.md's "Layout" table states: a module imports only the modules listed
//! before it. Read from the sources, so an import that points up fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top, as in docs/contributing.md's Layout table.
const LAYERS: [&str; 18] = [
    "tensor_io",
    "seed",
    "user_dirs",
    "interrupt",
    "shim",
    "model",
    "text",
    "geo",
    "data",
    "synth",
    "dist",
    "config",
    "pretrained",
    "encode",
    "eval",
    "train",
    "finetune",
    "commands",
];

/// The `crate::x` modules that the Rust files under `path` name.
fn imports(path: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let files: Vec<_> = match path.is_dir() {
        true => std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect(),
        false => vec![path.to_path_buf()],
    };
    for file in files {
        if file.is_dir() {
            found.extend(imports(&file));
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut violations = vec![];
    for (level, module) in LAYERS.iter().enumerate() {
        assert!(
            lib.contains(&format!("pub mod {module};")),
            "{module} is not a module of lib.rs"
        );
        let path = match src.join(module).is_dir() {
            true => src.join(module),
            false => src.join(format!("{module}.rs")),
        };
        for used in imports(&path) {
            let Some(at) = LAYERS.iter().position(|m| *m == used) else {
                panic!("{module} imports crate::{used}, which is not in the layer list");
            };
            if at > level {
                violations.push(format!("{module} imports {used}"));
            }
        }
    }
    // Every module of the library is placed in a layer.
    for line in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let module = line.trim_end_matches(';');
        assert!(
            LAYERS.contains(&module),
            "lib.rs module {module} has no layer"
        );
    }
    assert!(violations.is_empty(), "imports pointing up: {violations:?}");
}
