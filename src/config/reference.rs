//! `streetclip config defaults`: the complete default config as YAML, every key preceded by the
//! doc comment of its field (and the choices of an enum), read from the config structs' schema
//! so the reference cannot drift from the code.

use super::Config;
use serde_json::Value as Json;
use serde_yaml::Value;

const WIDTH: usize = 96;

/// The default config, commented; parsing it gives `Config::default()`.
pub fn commented_defaults() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes");
    let defaults = serde_yaml::to_value(Config::default()).expect("config serializes");
    let mut out = String::from(
        "# streetclip's complete default config. A config file states only the keys that differ;\n\
         # `--set section.key=value` overrides one from the command line.\n",
    );
    write_section(&mut out, &schema, &schema, &defaults, 0);
    out
}

/// The doc comment of every key of `defaults` (a section) and its value, recursing into
/// sections; `schema` describes the section.
fn write_section(out: &mut String, root: &Json, schema: &Json, defaults: &Value, depth: usize) {
    let Value::Mapping(map) = defaults else {
        unreachable!("sections are mappings")
    };
    let indent = "  ".repeat(depth);
    for (key, value) in map {
        let key = key.as_str().expect("config keys are strings");
        let field = &schema["properties"][key];
        if depth == 0 {
            out.push('\n');
        }
        for line in describe(root, field) {
            out.push_str(&format!("{indent}# {line}\n"));
        }
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                out.push_str(&format!("{indent}{key}:\n"));
                write_section(out, root, resolve(root, field), value, depth + 1);
            }
            _ => {
                let mut one = serde_yaml::Mapping::new();
                one.insert(Value::String(key.into()), value.clone());
                let text = serde_yaml::to_string(&one).expect("value serializes");
                for line in text.lines() {
                    out.push_str(&format!("{indent}{line}\n"));
                }
            }
        }
    }
}

/// The field's description (or its type's), wrapped, then the choices of an enum type.
pub(crate) fn describe(root: &Json, field: &Json) -> Vec<String> {
    let target = resolve(root, field);
    let text = field["description"]
        .as_str()
        .or(target["description"].as_str())
        .unwrap_or_default();
    let mut lines = wrap(text);
    // An enum's values: one variant per documented value, or all in one `enum` list.
    let variants = match target["oneOf"].as_array() {
        Some(variants) => variants.as_slice(),
        None if target["enum"].is_array() => std::slice::from_ref(target),
        None => &[],
    };
    let choices: Vec<String> = variants.iter().flat_map(choice).collect();
    if !choices.is_empty() {
        lines.extend(wrap(&format!("One of: {}.", choices.join("; "))));
    }
    // A section that is absent by default (`null`): its keys, so they can be written.
    if let Some(keys) = target["properties"]
        .as_object()
        .filter(|_| field.get("anyOf").is_some())
    {
        let keys: Vec<String> = keys
            .iter()
            .map(|(k, v)| match v["description"].as_str() {
                Some(d) => format!("{k}: {}", lowercase_first(d.trim_end_matches('.'))),
                None => k.clone(),
            })
            .collect();
        lines.extend(wrap(&format!("Its keys: {}.", keys.join("; "))));
    }
    lines
}

/// `name` or `name: description` for each value an enum variant allows.
fn choice(variant: &Json) -> Vec<String> {
    let names: Vec<&str> = match (&variant["const"], &variant["enum"]) {
        (Json::String(c), _) => vec![c],
        (_, Json::Array(values)) => values.iter().filter_map(Json::as_str).collect(),
        _ => vec![],
    };
    let about = variant["description"].as_str();
    names
        .into_iter()
        .map(|n| match about {
            Some(d) => format!("{n}: {}", lowercase_first(d.trim_end_matches('.'))),
            None => n.to_string(),
        })
        .collect()
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_lowercase().chain(chars).collect())
}

/// The schema a field's `$ref` (also inside `anyOf`, as for an `Option`) points at, else the
/// field itself.
fn resolve<'a>(root: &'a Json, field: &'a Json) -> &'a Json {
    let reference = field["$ref"].as_str().or_else(|| {
        field["anyOf"]
            .as_array()?
            .iter()
            .find_map(|s| s["$ref"].as_str())
    });
    match reference.and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => &root["$defs"][name],
        None => field,
    }
}

/// Doc-comment text re-flowed into comment lines of at most `WIDTH` characters; blank lines
/// (paragraphs) are kept.
fn wrap(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > WIDTH {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_back_to_the_defaults() {
        let text = commented_defaults();
        let parsed: Config = serde_yaml::from_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
    }

    /// A key added without a doc comment fails here, so the reference stays complete.
    #[test]
    fn every_key_has_a_comment() {
        let text = commented_defaults();
        let mut previous = "";
        let mut undocumented = Vec::new();
        for line in text.lines() {
            let body = line.trim_start();
            let is_key = !body.starts_with('#')
                && !body.starts_with('-')
                && body.split_once(':').is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if is_key && !previous.trim_start().starts_with('#') {
                undocumented.push(body.to_string());
            }
            previous = line;
        }
        assert!(
            undocumented.is_empty(),
            "keys without a doc comment: {undocumented:?}"
        );
    }

    #[test]
    fn enums_list_their_choices() {
        let text = commented_defaults();
        assert!(text.contains("One of: full_batch: the loss"), "{text}");
        assert!(text.contains("One of: skip: leave"), "{text}");
    }
}
