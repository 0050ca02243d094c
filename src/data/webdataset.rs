//! WebDataset tar shards (what img2dataset writes): members grouped by key
//! (`000123.jpg` + `000123.json` / `000123.txt`), indexed by offset so images are read in
//! place, never unpacked. Brace patterns (`shard-{0000..0099}.tar`) name shard lists.

use super::image_ref::ImageRef;
use super::manifest::Columns;
use super::places::RawLabel;
use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "jfif"];

/// More shards than any data set has: a pattern beyond this is a typo, not a data set.
const MAX_SHARDS: u64 = 1_000_000;

/// Expands `{a..b}` ranges (zero padding kept) and `{x,y,z}` lists, left to right; at most
/// [`MAX_SHARDS`] names.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .with_context(|| format!("`{pattern}`: `{{` without `}}`"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let options: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (start, end): (u64, u64) = match (a.parse(), b.parse()) {
            (Ok(s), Ok(e)) if s <= e => (s, e),
            _ => bail!("`{pattern}`: `{{{body}}}` is not a range like {{0000..0099}}"),
        };
        if end - start >= MAX_SHARDS {
            bail!("`{pattern}`: `{{{body}}}` names {} shards, more than {MAX_SHARDS}: check the range", end as u128 - start as u128 + 1);
        }
        let width = if a.starts_with('0') { a.len() } else { 0 };
        (start..=end).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(String::from).collect()
    };
    let rest = expand_braces(tail)?;
    if options.len() as u64 * rest.len() as u64 > MAX_SHARDS {
        bail!(
            "`{pattern}` names {} shards, more than {MAX_SHARDS}: check the ranges",
            options.len() as u64 * rest.len() as u64
        );
    }
    Ok(options
        .iter()
        .flat_map(|o| rest.iter().map(move |r| format!("{head}{o}{r}")))
        .collect())
}

fn safe_member(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Key and extension as WebDataset splits them: at the first dot of the file name.
fn split_key(path: &str) -> (String, String) {
    let name_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[name_start..].find('.') {
        Some(dot) => (
            path[..name_start + dot].to_string(),
            path[name_start + dot + 1..].to_lowercase(),
        ),
        None => (path.to_string(), String::new()),
    }
}

#[derive(Default)]
struct Pending {
    key: String,
    image: Option<(u64, u64)>,
    json: Option<serde_json::Map<String, serde_json::Value>>,
    txt: Option<String>,
}

type Rows = (Vec<(ImageRef, RawLabel, String)>, Vec<(String, String)>);

/// Every sample of every shard the pattern names, and `(where, why)` for members that cannot
/// make one (unsafe paths, a missing image or label, unreadable data).
pub fn index(pattern: &str, columns: &Columns) -> Result<Rows> {
    let shards = expand_braces(pattern)?;
    let (mut rows, mut bad) = (Vec::new(), Vec::new());
    for shard in shards {
        let path = Arc::new(PathBuf::from(&shard));
        if !path.is_file() {
            bail!("shard {shard} does not exist (from data.shards `{pattern}`)");
        }
        index_shard(&path, columns, &mut rows, &mut bad)?;
    }
    Ok((rows, bad))
}

fn index_shard(
    shard: &Arc<PathBuf>,
    columns: &Columns,
    rows: &mut Vec<(ImageRef, RawLabel, String)>,
    bad: &mut Vec<(String, String)>,
) -> Result<()> {
    use std::io::Read;
    let file = std::fs::File::open(shard.as_path())
        .with_context(|| format!("cannot open shard {}", shard.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut pending = Pending::default();
    let entries = archive
        .entries_with_seek()
        .with_context(|| format!("{} is not a tar file", shard.display()))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                bad.push((
                    shard.display().to_string(),
                    format!("corrupt or truncated tar, rest of the shard left out: {e}"),
                ));
                break;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().map(|p| p.to_path_buf()).unwrap_or_default();
        let origin = format!("{}:{}", shard.display(), member.display());
        if !safe_member(&member) {
            bad.push((origin, "member path is absolute or contains `..`".into()));
            continue;
        }
        let (key, ext) = split_key(&member.to_string_lossy());
        if key != pending.key {
            finish(shard, std::mem::take(&mut pending), columns, rows, bad);
            pending.key = key;
        }
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            pending.image = Some((entry.raw_file_position(), entry.size()));
        } else if ext == "json" || ext == "txt" {
            let mut text = String::new();
            if let Err(e) = entry.read_to_string(&mut text) {
                bad.push((origin, format!("unreadable {ext}: {e}")));
                continue;
            }
            if ext == "txt" {
                pending.txt = Some(text.trim().to_string());
            } else {
                match serde_json::from_str(&text) {
                    Ok(obj) => pending.json = Some(obj),
                    Err(e) => bad.push((origin, format!("invalid JSON: {e}"))),
                }
            }
        }
    }
    finish(shard, pending, columns, rows, bad);
    Ok(())
}

fn finish(
    shard: &Arc<PathBuf>,
    p: Pending,
    columns: &Columns,
    rows: &mut Vec<(ImageRef, RawLabel, String)>,
    bad: &mut Vec<(String, String)>,
) {
    if p.key.is_empty() {
        return;
    }
    let origin = format!("{}:{}", shard.display(), p.key);
    let Some((offset, len)) = p.image else {
        bad.push((origin, "no image member".into()));
        return;
    };
    let mut label = RawLabel {
        caption: p.txt,
        ..RawLabel::default()
    };
    if let Some(obj) = &p.json {
        let keys: Vec<String> = obj.keys().cloned().collect();
        let fields = match columns.resolve(&keys, shard) {
            Ok(f) => f,
            Err(e) => {
                bad.push((origin, e.to_string()));
                return;
            }
        };
        let get = |i: usize| {
            fields[i]
                .as_ref()
                .and_then(|k| obj.get(k))
                .filter(|v| !v.is_null())
        };
        let text = |i: usize| {
            get(i).map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
        };
        let number = |i: usize| {
            get(i).map(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            })
        };
        let (lat, lon) = (number(4), number(5));
        if lat == Some(None) || lon == Some(None) {
            bad.push((origin, "lat/lon is not a number".into()));
            return;
        }
        label = RawLabel {
            city: text(1),
            region: text(2),
            country: text(3),
            lat: lat.flatten(),
            lon: lon.flatten(),
            caption: label.caption.or(text(6)),
        };
    }
    if label == RawLabel::default() {
        bad.push((origin, "no .json or .txt label".into()));
        return;
    }
    rows.push((
        ImageRef::Tar {
            shard: shard.clone(),
            key: p.key.as_str().into(),
            offset,
            len,
        },
        label,
        origin,
    ));
}
