//! safetensors files <-> tch tensors, with errors that name the file.

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use tch::{Kind, Tensor};

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => bail!("cannot store tensors of kind {other:?} in safetensors"),
    })
}

/// Every tensor of a safetensors file, on the CPU, in the file's dtype.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(read_with_metadata(path)?.0)
}

/// Every tensor of a safetensors file, on the CPU, in the file's dtype, over the file's mapped
/// pages instead of a copy (as transformers loads safetensors): validated as `read` does (the
/// header, every tensor's bytes within the file), then nothing is read until used, and the
/// mapping lasts as long as any of the tensors. The mapping is private: writing to a tensor
/// copies the pages it writes, never the file. The file must not be truncated or rewritten in
/// place while mapped (streetclip replaces files by rename, never in place). A tensor whose
/// bytes are not aligned to its element size (a writer that does not pad the header) is copied.
pub fn map(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    if file.metadata().map_or(true, |m| m.len() == 0) {
        // Nothing to map (mmap refuses a zero length): the same error as an empty `read`.
        parse(path, &[])?;
    }
    // SAFETY: a private (copy-on-write) mapping of a file that is only ever replaced by rename;
    // see above.
    let mapping = unsafe { memmap2::MmapOptions::new().map_copy(&file) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    let mapping = std::sync::Arc::new(mapping);
    let st = parse(path, &mapping)?;
    tensors_of(path, &st, |bytes, shape, kind| {
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(kind.elt_size_in_bytes());
        match aligned && !bytes.is_empty() {
            true => crate::shim::tensor_over(bytes, shape, kind, mapping.clone()),
            false => Ok(Tensor::from_data_size(bytes, shape, kind)),
        }
    })
}

/// Every tensor of `st` (parsed from `path`), sorted by name, each made by `make` from its
/// bytes, shape and kind.
fn tensors_of(
    path: &Path,
    st: &SafeTensors,
    make: impl Fn(&[u8], &[i64], Kind) -> Result<Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let Some(kind) = kind_of(view.dtype()) else {
            bail!(
                "{}: tensor `{name}` has unsupported dtype {:?}",
                path.display(),
                view.dtype()
            );
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, make(view.data(), &shape, kind)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A file's tensors by name, and its metadata (string pairs).
pub type TensorsAndMetadata = (Vec<(String, Tensor)>, HashMap<String, String>);

/// Whether `path` is a whole safetensors file (its header parses and every tensor's bytes are
/// there), without building any tensor.
pub fn check(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(path, &bytes).map(|_| ())
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).with_context(|| {
        format!(
            "{} is not a valid safetensors file (corrupt or truncated?)",
            path.display()
        )
    })
}

/// `read`, with the file's metadata (empty when it has none).
pub fn read_with_metadata(path: &Path) -> Result<TensorsAndMetadata> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = parse(path, &bytes)?;
    let out = tensors_of(path, &st, |bytes, shape, kind| {
        Ok(Tensor::from_data_size(bytes, shape, kind))
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    Ok((out, header.metadata().clone().unwrap_or_default()))
}

/// The first row (the first index of dimension 0) of `t` that holds a NaN or an infinity.
/// Checked a block of rows at a time, so the temporary mask stays small for a large index.
pub fn first_non_finite_row(t: &Tensor) -> Option<i64> {
    const ROWS: i64 = 16_384;
    let n = t.size().first().copied().unwrap_or(0);
    if t.numel() == 0 {
        return None;
    }
    let rows = t.reshape([n, -1]);
    (0..n).step_by(ROWS as usize).find_map(|start| {
        let block = rows.narrow(0, start, ROWS.min(n - start));
        let finite = block.isfinite();
        if bool::try_from(finite.all()).unwrap_or(false) {
            return None;
        }
        let bad = finite.all_dim(1, false).logical_not().to_kind(Kind::Uint8);
        Some(start + bad.argmax(0, false).int64_value(&[]))
    })
}

/// A tensor copied to contiguous CPU bytes, ready for safetensors.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Bytes {
    fn of(t: &Tensor) -> Result<Self> {
        Ok(Self {
            dtype: dtype_of(t.kind())?,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            data: raw_bytes(t),
        })
    }
}

/// A tensor's elements as contiguous CPU bytes in its own dtype (native byte order).
pub fn raw_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut data, numel);
    data
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` (contiguous, on the CPU) to `path` atomically: a temporary file in the same
/// directory, fsync, rename. Metadata `{"format": "pt"}` is what transformers expects.
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_with_metadata(path, tensors, &[])
}

/// `write`, with `extra` metadata pairs beside `{"format": "pt"}`.
pub fn write_with_metadata(
    path: &Path,
    tensors: &[(String, Tensor)],
    extra: &[(&str, String)],
) -> Result<()> {
    let owned = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), Bytes::of(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let buf = safetensors::serialize(owned.iter().map(|(n, b)| (n.as_str(), b)), Some(metadata))
        .with_context(|| format!("cannot serialize tensors for {}", path.display()))?;
    write_atomic(path, &buf)
}

/// Temporary file beside `path`, fsync, rename: readers see the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Fills a fresh directory beside `out` (`.NAME.tmp.PID`) with `fill`, syncs it and swaps it in
/// for `out` whole, so a reader (or a rerun) finds the old directory or the new one, never a mix
/// of both nor a half-written one. An existing `out` is replaced only when every entry in it is
/// one of `replaceable` (the files such a directory holds): anything else in it would be lost, so
/// that is an error naming it. Temporaries that dead processes left beside `out` or inside it
/// are removed first.
pub fn write_dir_atomic(
    out: &Path,
    replaceable: &[&str],
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .with_context(|| format!("{} is not a folder path", out.display()))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    remove_dead_temps(parent, Some(&name));
    if out.exists() {
        check_replaceable(out, replaceable)?;
        remove_dead_temps(out, None);
    }
    let tmp = parent.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = std::fs::create_dir(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))
        .and_then(|_| fill(&tmp))
        .and_then(|_| {
            sync_dir(&tmp);
            swap_in(&tmp, out)
        });
    let _ = std::fs::remove_dir_all(&tmp);
    written?;
    sync_dir(parent);
    Ok(())
}

/// Moves the complete directory `tmp` to `out`. An existing `out` is exchanged with `tmp` in one
/// step (`renameat2(RENAME_EXCHANGE)`, so `tmp` then holds the old one); where the file system
/// cannot, the old one is first moved aside.
fn swap_in(tmp: &Path, out: &Path) -> Result<()> {
    let context = || format!("cannot move the new {} into place", out.display());
    if !out.exists() {
        return std::fs::rename(tmp, out).with_context(context);
    }
    if exchange(tmp, out).is_ok() {
        return Ok(());
    }
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let aside = out.with_file_name(format!(".{name}.old.tmp.{}", std::process::id()));
    std::fs::rename(out, &aside).with_context(context)?;
    if let Err(e) = std::fs::rename(tmp, out) {
        let _ = std::fs::rename(&aside, out);
        return Err(e).with_context(context);
    }
    let _ = std::fs::remove_dir_all(&aside);
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// `out` may be replaced: a folder whose entries are all `replaceable` (or temporaries).
fn check_replaceable(out: &Path, replaceable: &[&str]) -> Result<()> {
    if !out.is_dir() {
        bail!(
            "{} exists and is not a folder: choose another output path",
            out.display()
        );
    }
    let entries =
        std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !replaceable.contains(&name.as_str()) && temp_owner(&name).is_none() {
            bail!(
                "{} already holds `{name}`, which is not part of what is written there; it would be lost when the folder is replaced: choose a new or empty folder, or move it away",
                out.display()
            );
        }
    }
    Ok(())
}

/// The process id in a temporary name this crate writes (`.X.tmpPID`, `.X.tmp.PID`).
fn temp_owner(name: &str) -> Option<i32> {
    let (_, pid) = name.strip_prefix('.')?.rsplit_once(".tmp")?;
    pid.trim_start_matches('.').parse().ok()
}

/// Removes the temporaries in `dir` (only those of `.NAME.` when `name` is given) whose writing
/// process is gone: a kill -9 mid-write leaves them, and nothing else would.
pub fn remove_dead_temps(dir: &Path, name: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let ours = name.is_none_or(|n| file.starts_with(&format!(".{n}.")));
        match temp_owner(&file) {
            Some(pid) if ours && !process_alive(pid) => {
                let path = entry.path();
                let _ = match path.is_dir() {
                    true => std::fs::remove_dir_all(&path),
                    false => std::fs::remove_file(&path),
                };
            }
            _ => {}
        }
    }
}

fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only asks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// fsync of a directory, so a rename in it survives a power loss (best effort: some file systems
/// refuse).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
