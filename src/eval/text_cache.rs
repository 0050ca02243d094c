//! An on-disk cache of candidate text embeddings. Zero-shot evaluation encodes the same few
//! thousand prompts (every country, the cities of every predicted country) for each run; a
//! ViT-L text tower takes minutes for that on a CPU. Entries are keyed by a content hash of
//! what determines the embeddings — the text tower's weights, the tokenizer, the device kind
//! and the prompts — so a retrained model or an edited prompt can never hit a stale entry.

use crate::encode::TextEncoder;
use crate::formats::pretrained::Pretrained;
use anyhow::{Context, Result};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// `$STREETCLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/streetclip`, else `~/.cache/streetclip`.
pub fn default_cache_dir() -> Option<PathBuf> {
    use crate::user_dirs::{env_path, user_cache};
    env_path("STREETCLIP_CACHE_DIR").or_else(|| user_cache("streetclip"))
}

/// What makes a model's text embeddings what they are, hashed: text-tower tensors (names,
/// shapes, dtypes, bytes), the tokenizer definition and the device kind.
pub fn text_fingerprint(clip: &Pretrained) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for (name, t) in crate::formats::weights::named_tensors(&clip.model.vs) {
        if !(name.starts_with("text_model.") || name.starts_with("text_projection.")) {
            continue;
        }
        h.update(format!("{name} {:?} {:?}\n", t.kind(), t.size()).as_bytes());
        h.update(&crate::formats::tensor_io::raw_bytes(&t));
    }
    h.update(clip.tokenizer.definition()?.as_bytes());
    h.update(if clip.device().is_cuda() {
        b"cuda"
    } else {
        b"cpu"
    });
    Ok(h.finalize().to_hex().to_string())
}

/// A model's encoder behind the cache in `default_cache_dir()`, or uncached when `enabled` is
/// false or no cache folder can be named.
pub fn for_model(clip: &Pretrained, enabled: bool) -> Result<CachedText<'_, Pretrained>> {
    match default_cache_dir().filter(|_| enabled) {
        Some(dir) => Ok(CachedText::new(clip, text_fingerprint(clip)?, Some(&dir))),
        None => Ok(CachedText::new(clip, String::new(), None)),
    }
}

/// A `TextEncoder` that serves repeated prompt lists from `dir/text-embeddings/`.
pub struct CachedText<'a, E: TextEncoder> {
    inner: &'a E,
    fingerprint: String,
    /// None: no caching, every call goes to `inner`.
    dir: Option<PathBuf>,
    pub hits: Cell<usize>,
    pub misses: Cell<usize>,
    warned: Cell<bool>,
}

impl<'a, E: TextEncoder> CachedText<'a, E> {
    /// `fingerprint` must change whenever `inner`'s embeddings could (see `text_fingerprint`).
    pub fn new(inner: &'a E, fingerprint: String, dir: Option<&Path>) -> Self {
        Self {
            inner,
            fingerprint,
            dir: dir.map(|d| d.join("text-embeddings")),
            hits: Cell::new(0),
            misses: Cell::new(0),
            warned: Cell::new(false),
        }
    }

    fn entry(&self, dir: &Path, texts: &[String]) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(self.fingerprint.as_bytes());
        for t in texts {
            // Length-prefixed, so ["ab", "c"] and ["a", "bc"] differ.
            h.update(&(t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        dir.join(format!("{}.safetensors", h.finalize().to_hex()))
    }

    /// The cached embeddings of `n` prompts at `path`. An entry is trusted only when its
    /// tensor is `[n, d]` float32 for this encoder's `d`, every value finite, and its bytes hash to
    /// the checksum stored with them; `Err` says which check failed (the entry is then
    /// recomputed and replaced), `Ok(None)` that there is no entry.
    fn lookup(&self, path: &Path, n: usize) -> Result<Option<Tensor>, String> {
        if !path.exists() {
            return Ok(None);
        }
        let (tensors, metadata) =
            crate::formats::tensor_io::read_with_metadata(path).map_err(|e| format!("{e:#}"))?;
        let (_, t) = tensors
            .into_iter()
            .find(|(name, _)| name == "embeddings")
            .ok_or("no `embeddings` tensor")?;
        let want = [n as i64, self.inner.dim()];
        if t.size() != want || t.kind() != Kind::Float {
            return Err(format!(
                "{:?} {:?} where {want:?} float32 was expected",
                t.kind(),
                t.size()
            ));
        }
        if metadata.get(CHECKSUM_KEY) != Some(&checksum(&t)) {
            return Err("its checksum does not match its values".into());
        }
        if !bool::try_from(t.isfinite().all()).unwrap_or(false) {
            return Err("it holds values that are not finite".into());
        }
        Ok(Some(t))
    }
}

/// Where an entry keeps the BLAKE3 hash of its tensor's shape and bytes.
const CHECKSUM_KEY: &str = "blake3";

fn checksum(t: &Tensor) -> String {
    let mut h = blake3::Hasher::new();
    h.update(format!("{:?}", t.size()).as_bytes());
    h.update(&crate::formats::tensor_io::raw_bytes(t));
    h.finalize().to_hex().to_string()
}

impl<E: TextEncoder> TextEncoder for CachedText<'_, E> {
    fn encode(&self, texts: &[String]) -> Result<Tensor> {
        let Some(dir) = &self.dir else {
            return self.inner.encode(texts);
        };
        let path = self.entry(dir, texts);
        match self.lookup(&path, texts.len()) {
            Ok(Some(t)) => {
                self.hits.set(self.hits.get() + 1);
                return Ok(t);
            }
            Ok(None) => {}
            Err(why) => eprintln!(
                "warning: text-embedding cache entry {} is damaged ({why}): recomputed and replaced",
                path.display()
            ),
        }
        self.misses.set(self.misses.get() + 1);
        let t = self.inner.encode(texts)?.to_kind(Kind::Float);
        // A cache that cannot be written costs time, not results: warn once and go on.
        let stored = std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
            .and_then(|_| {
                crate::formats::tensor_io::write_with_metadata(
                    &path,
                    &[("embeddings".to_string(), t.shallow_clone())],
                    &[(CHECKSUM_KEY, checksum(&t))],
                )
            });
        if let Err(e) = stored {
            if !self.warned.replace(true) {
                eprintln!("warning: text-embedding cache not written ({e:#}); set STREETCLIP_CACHE_DIR or geo.cache: false");
            }
        }
        Ok(t)
    }

    fn scale(&self) -> f64 {
        self.inner.scale()
    }

    fn dim(&self) -> i64 {
        self.inner.dim()
    }
}
