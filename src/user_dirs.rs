//! Folders named by environment variables, with the XDG cache convention as the fallback.

use std::path::PathBuf;

/// The path in environment variable `key`, when it is set and not empty.
pub fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `$XDG_CACHE_HOME/<name>`, else `~/.cache/<name>`.
pub fn user_cache(name: &str) -> Option<PathBuf> {
    env_path("XDG_CACHE_HOME")
        .map(|d| d.join(name))
        .or_else(|| env_path("HOME").map(|h| h.join(".cache").join(name)))
}
