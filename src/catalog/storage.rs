//! Where table files are read from: OpenDAL for every store (local files, S3, GCS, Azure), except that local files
//! are read with buffers of the size asked for.
//!
//! OpenDAL's local reader reads into a fresh 2 MiB buffer whatever the size of the read, and tokio's file beneath
//! it into another: a table's 700-byte metadata file, a manifest, or a Parquet footer each cost two 2 MiB
//! allocations, which the allocator takes from fresh memory the kernel faults in and zeroes as huge pages — most of
//! the time of loading a small table's metadata (a `list_tables` page of 50 tables not yet loaded spent a third of
//! its CPU there). Local files are read here instead, on tokio's blocking pool as OpenDAL does, into a buffer of
//! the file's or the range's own size. Paths are taken exactly as OpenDAL's local store takes them (`file:` and
//! what follows, no decoding), so the same file is read either way; writes and every other store are OpenDAL's.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// Builds [`LocalReads`] over OpenDAL's storage for each path's scheme.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LocalReadsFactory {
    inner: iceberg_storage_opendal::OpenDalResolvingStorageFactory,
}

#[typetag::serde(name = "ParleyLocalReadsFactory")]
impl StorageFactory for LocalReadsFactory {
    fn build(&self, config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(LocalReads {
            inner: self.inner.build(config)?,
        }))
    }
}

/// OpenDAL's storage, with local files read by [`LocalReads::read`] and [`LocalReads::reader`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalReads {
    inner: Arc<dyn Storage>,
}

/// The local file a path names, as OpenDAL's local store (rooted at `/`) finds it: what follows `file:`, leading
/// slashes made one. `None` for other schemes.
fn local_path(path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix("file:/")?;
    Some(PathBuf::from(format!("/{}", rest.trim_start_matches('/'))))
}

fn read_error(path: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unexpected, format!("cannot read {path}: {e}"))
}

/// Runs a file system call on tokio's blocking pool (as OpenDAL's local store does).
async fn blocking<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| read_error(path, e))?
        .map_err(|e| read_error(path, e))
}

#[async_trait::async_trait]
#[typetag::serde(name = "ParleyLocalReads")]
impl Storage for LocalReads {
    async fn exists(&self, path: &str) -> Result<bool> {
        self.inner.exists(path).await
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        self.inner.metadata(path).await
    }

    /// A whole local file in one buffer of its size.
    async fn read(&self, path: &str) -> Result<Bytes> {
        match local_path(path) {
            Some(file) => blocking(path, move || std::fs::read(file))
                .await
                .map(Bytes::from),
            None => self.inner.read(path).await,
        }
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        #[cfg(unix)]
        if let Some(file) = local_path(path) {
            let file = blocking(path, move || std::fs::File::open(file)).await?;
            return Ok(Box::new(LocalRead {
                file: Arc::new(file),
                path: path.to_string(),
            }));
        }
        self.inner.reader(path).await
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        self.inner.write(path, bs).await
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        self.inner.writer(path).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.inner.delete(path).await
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        self.inner.delete_prefix(path).await
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> Result<()> {
        self.inner.delete_stream(paths).await
    }

    /// An input file read through this storage (OpenDAL's own would read through OpenDAL).
    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        self.inner.new_output(path)
    }
}

/// Ranges of one open local file, each read into a buffer of the range's size.
#[cfg(unix)]
struct LocalRead {
    file: Arc<std::fs::File>,
    path: String,
}

#[cfg(unix)]
#[async_trait::async_trait]
impl FileRead for LocalRead {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        use std::os::unix::fs::FileExt as _;
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|e| read_error(&self.path, e))?;
        let file = self.file.clone();
        blocking(&self.path, move || {
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, range.start)?;
            Ok(Bytes::from(bytes))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_taken_as_opendal_takes_them() {
        for (given, expected) in [
            (
                "file:///data/wh/t/metadata/v1.json",
                Some("/data/wh/t/metadata/v1.json"),
            ),
            ("file:/data/wh/t/a.parquet", Some("/data/wh/t/a.parquet")),
            ("file://data/a%20b.parquet", Some("/data/a%20b.parquet")),
            ("s3://bucket/wh/t/a.parquet", None),
            ("/data/a.parquet", None),
        ] {
            assert_eq!(local_path(given), expected.map(PathBuf::from), "{given}");
        }
    }

    #[tokio::test]
    async fn local_files_read_the_same_as_through_opendal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a file.bin");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        let path = format!("file://{}", file.display());
        let config = StorageConfig::new();
        let ours = LocalReadsFactory::default().build(&config).unwrap();
        let theirs = iceberg_storage_opendal::OpenDalResolvingStorageFactory::new()
            .build(&config)
            .unwrap();
        assert_eq!(
            ours.read(&path).await.unwrap(),
            theirs.read(&path).await.unwrap()
        );
        let input = ours.new_input(&path).unwrap();
        assert_eq!(input.read().await.unwrap().as_ref(), bytes.as_slice());
        let (a, b) = (
            ours.reader(&path).await.unwrap(),
            theirs.reader(&path).await.unwrap(),
        );
        for range in [0..1, 10..4096, 99_000..100_000, 5..5] {
            assert_eq!(
                a.read(range.clone()).await.unwrap(),
                b.read(range.clone()).await.unwrap(),
                "{range:?}"
            );
        }
        // Past the end and a missing file are errors naming the path, as through OpenDAL.
        assert!(a.read(99_000..100_001).await.is_err());
        assert!(b.read(99_000..100_001).await.is_err());
        let missing = format!("file://{}", dir.path().join("missing").display());
        let e = ours.read(&missing).await.unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        assert!(theirs.read(&missing).await.is_err());
        // Other stores are OpenDAL's.
        assert!(ours.read("memory:/nothing").await.is_err());
    }
}
