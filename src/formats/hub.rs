//! `--model org/name` and `model.init: org/name` without a network: a Hugging Face hub id is
//! resolved from the local Hugging Face cache (where `hf download` and `from_pretrained` put
//! models), or refused with the command that downloads it.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// `spec` itself when it exists (or is not shaped like a hub id); else the cached snapshot of
/// the hub id `org/name`.
pub fn resolve(spec: &Path) -> Result<PathBuf> {
    let Some((org, name)) = hub_id(spec) else {
        return Ok(spec.to_path_buf());
    };
    let cache = cache_dir();
    if let Some(dir) = cache
        .as_deref()
        .and_then(|c| snapshot(&c.join(format!("models--{org}--{name}"))))
    {
        return Ok(dir);
    }
    let looked = cache.map_or("no Hugging Face cache folder".into(), |c| {
        format!("not in the Hugging Face cache {}", c.display())
    });
    bail!(
        "model directory {org}/{name} does not exist, and the hub model {org}/{name} is {looked}; download it with `.venv/bin/hf download {org}/{name} --local-dir checkpoints/{name}` and pass checkpoints/{name}"
    )
}

/// `(org, name)` of a relative path that does not exist and reads `org/name`. A path whose
/// first folder exists (`checkpoints/streetclip`) is a local path, not a hub id.
fn hub_id(spec: &Path) -> Option<(String, String)> {
    if spec.exists() || spec.is_absolute() {
        return None;
    }
    let text = spec.to_str()?;
    let (org, name) = text.split_once('/')?;
    if Path::new(org).is_dir() {
        return None;
    }
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (valid(org) && valid(name)).then(|| (org.to_string(), name.to_string()))
}

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub` (huggingface_hub's order).
fn cache_dir() -> Option<PathBuf> {
    use crate::user_dirs::{env_path, user_cache};
    env_path("HF_HUB_CACHE")
        .or_else(|| env_path("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| user_cache("huggingface/hub"))
}

/// The snapshot `refs/main` names, else the most recently modified one.
fn snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(hash) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(hash.trim());
        if dir.is_dir() {
            return Some(dir);
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// What to say about a local model path that does not exist: which it was taken for and how to
/// fill it (`hf download` of the model its name suggests).
pub fn missing_local(spec: &Path) -> String {
    let file = spec
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["pt", "pth", "bin", "safetensors"].contains(&e));
    if file {
        return format!("checkpoint file {} does not exist", spec.display());
    }
    let name = spec
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let hub = if name.contains("streetclip") {
        "geolocal/StreetCLIP".to_string()
    } else if name.starts_with("clip-vit-") {
        format!("openai/{name}")
    } else {
        "ORG/NAME".to_string()
    };
    format!(
        "model directory {} does not exist (taken as a local path; a Hugging Face CLIP directory with config.json and model.safetensors): download one into it, e.g. `.venv/bin/hf download {hub} --local-dir {}`, or pass another directory",
        spec.display(),
        spec.display()
    )
}

#[cfg(test)]
mod tests {
    use super::hub_id;
    use std::path::Path;

    #[test]
    fn only_relative_missing_org_slash_name_paths_are_hub_ids() {
        let id = |s: &str| hub_id(Path::new(s));
        assert_eq!(
            id("openai/clip-vit-large-patch14-336"),
            Some(("openai".into(), "clip-vit-large-patch14-336".into()))
        );
        assert_eq!(id("/nonexistent/model"), None);
        assert_eq!(id("runs/demo/export"), None);
        assert_eq!(id("./x"), None);
        assert_eq!(id("src"), None);
        assert_eq!(id("src/model"), None, "an existing folder is a folder");
        assert_eq!(
            id("src/streetclip"),
            None,
            "a missing folder inside an existing one is a local path"
        );
    }
}
