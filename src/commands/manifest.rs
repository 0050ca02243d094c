//! `streetclip manifest --from-exif DIR`: a manifest (image, lat, lon, captured) of the
//! geotagged photos in a folder, so a user's own photos become training or test data.

use crate::data::collection::Sources;
use crate::data::geotag::{geotag, Geotag};
use crate::encode::progress_open;
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Write a manifest of the photos in a folder that carry a GPS position in their EXIF tags
/// (image, lat, lon, and the capture time when recorded); photos without one are counted and
/// left out.
#[derive(clap::Args)]
#[command(
    after_help = "Example (the demo photo has no GPS tags, so this writes a manifest with no rows and says so):\n  streetclip manifest --from-exif assets/demo --out /tmp/demo-manifest.csv"
)]
pub struct Args {
    /// A folder of photos, searched recursively for .jpg, .jpeg, .png and .webp.
    #[arg(long, value_name = "DIR")]
    pub from_exif: PathBuf,
    /// The CSV manifest to write (image paths relative to its folder when they are under it).
    #[arg(long)]
    pub out: PathBuf,
}

/// What a folder's photos gave.
#[derive(Debug, Default)]
pub struct Counts {
    pub photos: usize,
    pub geotagged: usize,
    /// No EXIF, or no GPS position in it.
    pub without: usize,
    /// `(path, why)`: unreadable EXIF or a malformed position.
    pub unreadable: Vec<(String, String)>,
}

pub fn exec(args: Args) -> Result<()> {
    let counts = write(&args.from_exif, &args.out)?;
    eprintln!(
        "wrote {}: {} of {} photos geotagged; {} without a GPS position; {} with unreadable EXIF",
        args.out.display(),
        counts.geotagged,
        counts.photos,
        counts.without,
        counts.unreadable.len()
    );
    for (path, why) in counts.unreadable.iter().take(5) {
        eprintln!("  {path}: {why}");
    }
    Ok(())
}

/// Photos read between two progress updates (in parallel).
const CHUNK: usize = 256;

/// Writes the manifest of `dir`'s geotagged photos to `out` (atomically, when all are read).
pub fn write(dir: &Path, out: &Path) -> Result<Counts> {
    if !dir.is_dir() {
        anyhow::bail!("--from-exif {}: not a folder", dir.display());
    }
    let base = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()
        .with_context(|| format!("the folder of --out {} does not exist", out.display()))?;
    let sources = Sources {
        paths: vec![dir.to_path_buf()],
        ..Sources::default()
    };
    let mut csv = csv::Writer::from_writer(vec![]);
    csv.write_record(["image", "lat", "lon", "captured"])?;
    let mut counts = Counts::default();
    let bar = progress_open("photos");
    let mut paths = sources.paths()?;
    loop {
        let chunk = paths.by_ref().take(CHUNK).collect::<Result<Vec<_>>>()?;
        if chunk.is_empty() {
            break;
        }
        let tags: Vec<Result<Option<Geotag>>> = chunk.par_iter().map(|p| geotag(p)).collect();
        for (path, tag) in chunk.iter().zip(tags) {
            counts.photos += 1;
            match tag {
                Ok(Some(t)) => {
                    counts.geotagged += 1;
                    csv.write_record([
                        relative_to(&base, path),
                        t.lat.to_string(),
                        t.lon.to_string(),
                        t.captured.unwrap_or_default(),
                    ])?;
                }
                Ok(None) => counts.without += 1,
                Err(e) => counts
                    .unreadable
                    .push((path.display().to_string(), format!("{e:#}"))),
            }
        }
        bar.set_position(counts.photos as u64);
    }
    bar.finish_and_clear();
    crate::formats::tensor_io::write_atomic(out, &csv.into_inner()?)?;
    Ok(counts)
}

/// `path` relative to `base` when it is under it (so the manifest moves with its photos),
/// else absolute.
fn relative_to(base: &Path, path: &Path) -> String {
    let absolute = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    absolute
        .strip_prefix(base)
        .unwrap_or(&absolute)
        .display()
        .to_string()
}
