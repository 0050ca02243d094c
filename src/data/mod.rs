//! Data: manifests and WebDataset shards, labels, image preprocessing, the loader.

pub mod classes;
pub mod collection;
pub mod dataset;
pub mod decode;
pub mod geotag;
pub mod image_ref;
pub mod levels;
pub mod loader;
pub mod manifest;
pub mod places;
pub mod preprocess;
pub mod resample;
pub mod webdataset;
pub use dataset::{DataConfig, Dataset, OnError, Sample};
pub use image_ref::ImageRef;
pub use preprocess::PreprocessConfig;

/// Why `path` cannot be read as a file, when it cannot: it does not exist, or it is a folder, a
/// pipe, a device or a socket (each said as such, so `<(...)` or `/dev/zero` is not reported as
/// missing). `None` for a regular file (or a link to one).
pub fn not_a_file(path: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = match std::fs::metadata(path) {
        Ok(m) => m.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("does not exist"),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Some("cannot be read: permission denied")
        }
        Err(_) => return Some("cannot be examined (an I/O error)"),
    };
    Some(if kind.is_file() {
        return None;
    } else if kind.is_dir() {
        "is a folder, not a file"
    } else if kind.is_fifo() {
        "is a pipe (a FIFO, or a process substitution such as <(...)), not a regular file: save it to a file first"
    } else if kind.is_char_device() || kind.is_block_device() {
        "is a device (such as /dev/zero), not a regular file"
    } else if kind.is_socket() {
        "is a socket, not a regular file"
    } else {
        "is not a regular file"
    })
}
