//! Where an image's bytes are: a file, or a member of a WebDataset tar shard read in place.

use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;

/// Where an image's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    File(PathBuf),
    /// A member of a tar shard: the sample's key (named as `shard:key`), its data's offset and
    /// length.
    Tar {
        shard: Arc<PathBuf>,
        key: Arc<str>,
        offset: u64,
        len: u64,
    },
}

impl ImageRef {
    pub fn read(&self) -> Result<Vec<u8>> {
        use anyhow::Context;
        use std::io::{Read, Seek, SeekFrom};
        match self {
            ImageRef::File(p) => {
                std::fs::read(p).with_context(|| format!("cannot read image {}", p.display()))
            }
            ImageRef::Tar {
                shard, offset, len, ..
            } => {
                let mut f = std::fs::File::open(shard.as_path())
                    .with_context(|| format!("cannot open shard {}", shard.display()))?;
                f.seek(SeekFrom::Start(*offset))?;
                let mut buf = vec![0; *len as usize];
                f.read_exact(&mut buf).with_context(|| {
                    format!(
                        "shard {} ends inside a member (truncated?)",
                        shard.display()
                    )
                })?;
                Ok(buf)
            }
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::File(p) => write!(f, "{}", p.display()),
            ImageRef::Tar { shard, key, .. } => write!(f, "{}:{key}", shard.display()),
        }
    }
}
