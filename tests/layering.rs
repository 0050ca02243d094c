//! The module layering docs/contributing.md's "Layout" table states: a module imports only the modules listed
//! before it. Read from the sources, so an import that points up fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top, as in docs/contributing.md's Layout table. `formats::x` are the files of the
/// formats folder, each in its own layer.
const LAYERS: [&str; 24] = [
    "shim",
    "formats::tensor_io",
    "seed",
    "user_dirs",
    "interrupt",
    "model",
    "formats::pickle",
    "formats::hub",
    "formats::weights",
    "formats::openai",
    "text",
    "geo",
    "data",
    "synth",
    "dist",
    "config",
    "formats::pretrained",
    "encode",
    "eval",
    "train",
    "finetune",
    "serve",
    "commands",
    "formats",
];

/// A folder whose files are layered one by one.
const SPLIT: &str = "formats";

/// The modules that the Rust files under `path` name: `crate::x`, or `formats::y` for
/// `crate::formats::y` (and `super::y` inside the formats folder).
fn imports(path: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let files: Vec<_> = match path.is_dir() {
        true => std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect(),
        false => vec![path.to_path_buf()],
    };
    let name_at = |text: &str, i: usize| -> String {
        text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect()
    };
    for file in files {
        if file.is_dir() {
            found.extend(imports(&file));
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let in_split = file.parent().is_some_and(|d| d.ends_with(SPLIT));
        for (i, _) in text.match_indices("crate::") {
            let name = name_at(&text, i + 7);
            match name == SPLIT && text[i + 7 + name.len()..].starts_with("::") {
                true => found.insert(format!("{SPLIT}::{}", name_at(&text, i + 9 + name.len()))),
                false => found.insert(name),
            };
        }
        if in_split {
            // `super::x` of a sibling file (not of a file's own `mod tests`, whose `super` is
            // the file itself).
            for (i, _) in text.match_indices("super::") {
                let name = name_at(&text, i + 7);
                if file.with_file_name(format!("{name}.rs")).exists() {
                    found.insert(format!("{SPLIT}::{name}"));
                }
            }
        }
    }
    found
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let split_mod = std::fs::read_to_string(src.join(SPLIT).join("mod.rs")).unwrap();
    let mut violations = vec![];
    for (level, module) in LAYERS.iter().enumerate() {
        let (declared, path) = match module.split_once("::") {
            Some((_, file)) => (
                split_mod.contains(&format!("pub mod {file};")),
                src.join(SPLIT).join(format!("{file}.rs")),
            ),
            None => (
                lib.contains(&format!("pub mod {module};")),
                match src.join(module).is_dir() {
                    true if *module == SPLIT => src.join(module).join("mod.rs"),
                    true => src.join(module),
                    false => src.join(format!("{module}.rs")),
                },
            ),
        };
        assert!(declared, "{module} is not a module of the library");
        for used in imports(&path) {
            let Some(at) = LAYERS.iter().position(|m| *m == used) else {
                panic!("{module} imports crate::{used}, which is not in the layer list");
            };
            if at > level {
                violations.push(format!("{module} imports {used}"));
            }
        }
    }
    // Every module of the library (and every file of the split folder) is placed in a layer.
    for (text, prefix) in [(&lib, ""), (&split_mod, "formats::")] {
        for line in text.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
            let module = format!("{prefix}{}", line.trim_end_matches(';'));
            assert!(
                LAYERS.contains(&module.as_str()),
                "module {module} has no layer"
            );
        }
    }
    assert!(violations.is_empty(), "imports pointing up: {violations:?}");
}
