//! The images a command is given, as one stream of paths: files as named, folders walked
//! recursively (image extensions only, in sorted order, links followed once), a list file with
//! one path per line (`-`: standard input), a manifest's image column. Lazily: a million paths
//! are never held at once (a manifest excepted, which is read whole as training reads it).

use super::manifest::{self, Columns};
use anyhow::{Context, Result};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// File extensions a folder is searched for (case-insensitive): what the decoders read.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Where a command's images come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Image files (taken as named, whatever their extension) and folders (walked).
    pub paths: Vec<PathBuf>,
    /// A text file of paths, one per line; `-` is standard input.
    pub files_from: Option<PathBuf>,
    /// A CSV/JSONL manifest; its image paths are relative to its folder.
    pub manifest: Option<PathBuf>,
}

/// A stream of image paths; an error (an unreadable folder or list) ends it.
pub type Paths = Box<dyn Iterator<Item = Result<PathBuf>>>;

impl Sources {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.files_from.is_none() && self.manifest.is_none()
    }

    /// Every image path, in order: `paths` (folders expanded), then the list, then the manifest.
    pub fn paths(&self) -> Result<Paths> {
        let mut streams: Vec<Paths> = Vec::new();
        for p in self.paths.clone() {
            streams.push(match p.is_dir() {
                true => Box::new(walk(&p)),
                false => Box::new(std::iter::once(Ok(p))),
            });
        }
        if let Some(list) = &self.files_from {
            streams.push(list_file(list)?);
        }
        if let Some(m) = &self.manifest {
            let (records, bad) = manifest::read_images(m, &Columns::default(), None)?;
            if let Some((origin, why)) = bad.first() {
                anyhow::bail!("{origin}: {why} ({} rows without an image path)", bad.len());
            }
            streams.push(Box::new(records.into_iter().map(|r| Ok(r.image))));
        }
        Ok(Box::new(streams.into_iter().flatten()))
    }
}

/// Whether a folder's file is taken as an image, by its extension.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The image files under `root`, sorted by name at each level; a link is followed, but one
/// leading back to a folder above it (a loop) is not followed again.
fn walk(root: &Path) -> impl Iterator<Item = Result<PathBuf>> {
    let root_name = root.display().to_string();
    walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_map(move |entry| match entry {
            Ok(e) if e.file_type().is_dir() => None,
            Ok(e) => has_image_extension(e.path()).then(|| Ok(e.into_path())),
            Err(e) if e.loop_ancestor().is_some() => None,
            Err(e) => Some(Err(anyhow::anyhow!("{e}")).with_context(|| {
                format!("cannot list folder {root_name}: fix its permissions or leave it out")
            })),
        })
}

/// The paths listed in `list` (`-`: standard input), one per line, read as they are used; blank
/// lines are ignored, a trailing `\r` is dropped.
fn list_file(list: &Path) -> Result<Paths> {
    let name = list.display().to_string();
    let reader: Box<dyn BufRead> = match list.as_os_str() == "-" {
        true => Box::new(std::io::stdin().lock()),
        false => {
            let file = std::fs::File::open(list)
                .with_context(|| format!("cannot open --files-from {name}"))?;
            Box::new(std::io::BufReader::new(file))
        }
    };
    Ok(Box::new(reader.lines().filter_map(
        move |line| match line {
            Ok(l) => {
                let l = l.strip_suffix('\r').unwrap_or(&l);
                (!l.trim().is_empty()).then(|| Ok(PathBuf::from(l)))
            }
            Err(e) => Some(Err(e).with_context(|| format!("cannot read --files-from {name}"))),
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sources: &Sources, root: &Path) -> Vec<String> {
        let paths = sources
            .paths()
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap();
        paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
            .collect()
    }

    #[test]
    fn a_folder_is_walked_in_sorted_order_for_images_only_following_a_loop_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        for f in [
            "b/c/z.JPG",
            "b/a.png",
            "a.webp",
            "notes.txt",
            "b/c/y.jpeg",
            "b/x.gif",
        ] {
            std::fs::write(root.join(f), b"").unwrap();
        }
        std::os::unix::fs::symlink(root, root.join("b/c/loop")).unwrap();
        let sources = Sources {
            paths: vec![root.to_path_buf(), root.join("notes.txt")],
            ..Default::default()
        };
        let root_prefix = root.display().to_string();
        let found: Vec<String> = names(&sources, root);
        assert_eq!(
            found,
            ["a.webp", "b/a.png", "b/c/y.jpeg", "b/c/z.JPG", "notes.txt"],
            "under {root_prefix}"
        );
    }

    #[test]
    fn a_list_file_gives_its_lines_without_blank_ones_or_carriage_returns() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.txt");
        std::fs::write(&list, "one.jpg\r\n\n  \ntwo words.png\nlast.jpg").unwrap();
        let sources = Sources {
            files_from: Some(list),
            ..Default::default()
        };
        assert_eq!(
            names(&sources, dir.path()),
            ["one.jpg", "two words.png", "last.jpg"]
        );
    }
}
