//! Reading the audit log for `parley.audit_log`: an index of where each record is, by table, kept up to date
//! by reading only what was appended since the last query.
//!
//! A query used to read and verify the whole log (every segment) and decode every record, then drop those the
//! caller may not see: seconds on a log of hundreds of megabytes, for every query. [`AuditReader`] keeps, per
//! record, where it lies (file, offset, length) and its hash, and per resource (the `resource` field: a table,
//! or several joined by commas) the records that name it. Each query first indexes what was appended (checking
//! those records' chain links as [`super::verify`] does), then reads back only the records of the resources the
//! caller may see, checking each against the hash the index took when it linked it: a record edited after it was
//! indexed is reported as broken rather than shown.
//!
//! Files are known by inode: a rotation renames the active file (same inode, same bytes) and starts a new one, so
//! nothing already indexed is read again. A file that shrank, or a file order that contradicts the index, means
//! the log was cut or rewritten: the index is rebuilt from the start, which reports the break if there is one.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{AuditError, AuditRecord, Chain, segments};

/// Serves the records of the log whose active file is `path`, from an index updated incrementally.
pub struct AuditReader {
    path: PathBuf,
    index: Mutex<Index>,
}

/// A file of the log, known by inode.
struct Known {
    /// (device, inode).
    id: (u64, u64),
    /// Where it was last seen (rotation renames it).
    path: PathBuf,
    /// Bytes indexed: every complete line before this offset.
    indexed: u64,
}

/// Where one record lies, and its hash as linked.
struct Place {
    file: u32,
    offset: u64,
    len: u32,
    hash: [u8; 32],
}

struct Index {
    chain: Chain,
    files: Vec<Known>,
    records: Vec<Place>,
    /// Record positions (into `records`) per `resource` value, oldest first.
    by_resource: HashMap<String, Vec<u32>>,
    /// Bytes of the log read to build this index.
    bytes_read: u64,
}

impl Index {
    fn new() -> Index {
        Index {
            chain: Chain::new(1),
            files: Vec::new(),
            records: Vec::new(),
            by_resource: HashMap::new(),
            bytes_read: 0,
        }
    }
}

/// Why the index must be rebuilt from the start.
struct Rebuild;

impl AuditReader {
    /// A reader of the log whose active file is `path`; nothing is read until the first query.
    pub fn new(path: &Path) -> AuditReader {
        AuditReader {
            path: path.to_path_buf(),
            index: Mutex::new(Index::new()),
        }
    }

    /// The index, after indexing what was appended since the last call (rebuilt if the files contradict it).
    fn refreshed(&self) -> Result<std::sync::MutexGuard<'_, Index>, AuditError> {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.update(&mut index);
        if !matches!(outcome, Ok(Ok(()))) {
            // A failed or contradicted update leaves the index half-moved: start again from the first record.
            *index = Index::new();
            // An error in what was appended is the log's error; a contradiction is rebuilt below.
            let _contradicted = outcome?;
            if self.update(&mut index)?.is_err() {
                return Err(AuditError::Broken {
                    path: self.path.clone(),
                    seq: index.chain.next_seq,
                    message: "the log's files changed while they were read; query again"
                        .to_string(),
                });
            }
        }
        Ok(index)
    }

    /// The distinct `resource` values of the log's records.
    pub fn resources(&self) -> Result<Vec<String>, AuditError> {
        Ok(self.refreshed()?.by_resource.keys().cloned().collect())
    }

    /// Every record whose `resource` passes `visible` (called once per distinct resource), oldest first, after
    /// indexing what was appended since the last call. Also returns how many records the log holds.
    pub fn records(
        &self,
        mut visible: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<AuditRecord>, usize), AuditError> {
        let index = self.refreshed()?;
        let mut positions: Vec<u32> = index
            .by_resource
            .iter()
            .filter(|(resource, _)| visible(resource))
            .flat_map(|(_, at)| at.iter().copied())
            .collect();
        positions.sort_unstable();
        let mut out = Vec::with_capacity(positions.len());
        let mut open: HashMap<u32, File> = HashMap::new();
        for at in positions {
            let place = &index.records[at as usize];
            let known = &index.files[place.file as usize];
            let io = |source| AuditError::Io {
                path: known.path.clone(),
                source,
            };
            let file = match open.entry(place.file) {
                std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(File::open(&known.path).map_err(io)?)
                }
            };
            let mut line = vec![0u8; place.len as usize];
            file.seek(SeekFrom::Start(place.offset)).map_err(io)?;
            file.read_exact(&mut line).map_err(io)?;
            out.push(record_at(&known.path, at as u64 + 1, &line, &place.hash)?);
        }
        Ok((out, index.records.len()))
    }

    /// Indexes what was appended; `Err(Rebuild)` when the files contradict the index.
    fn update(&self, index: &mut Index) -> Result<Result<(), Rebuild>, AuditError> {
        let mut previous: Option<usize> = None;
        for path in segments(&self.path)? {
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(AuditError::Io { path, source }),
            };
            let id = (meta.dev(), meta.ino());
            let at = match index.files.iter().position(|f| f.id == id) {
                Some(at) => at,
                None => {
                    index.files.push(Known {
                        id,
                        path: path.clone(),
                        indexed: 0,
                    });
                    index.files.len() - 1
                }
            };
            // Records are read in file order: the files must come in the order they were indexed (a new one
            // last); any other order means the files were rewritten.
            if previous.is_some_and(|p| at <= p) {
                return Ok(Err(Rebuild));
            }
            previous = Some(at);
            index.files[at].path = path.clone();
            if meta.len() < index.files[at].indexed {
                return Ok(Err(Rebuild));
            }
            if meta.len() > index.files[at].indexed {
                self.index_file(index, at)?;
            }
        }
        Ok(Ok(()))
    }

    /// Indexes the complete lines of file `at` past what was indexed (a torn last line waits for its end).
    fn index_file(&self, index: &mut Index, at: usize) -> Result<(), AuditError> {
        let path = index.files[at].path.clone();
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io)?;
        let mut offset = index.files[at].indexed;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            let value = index.chain.link(&path, &line)?;
            let resource = value
                .get("resource")
                .and_then(|r| r.as_str())
                .unwrap_or_default()
                .to_string();
            let mut hash = [0u8; 32];
            let linked = value
                .get("hash")
                .and_then(|h| h.as_str())
                .and_then(|h| hex::decode(h).ok());
            if let Some(bytes) = linked.filter(|b| b.len() == 32) {
                hash.copy_from_slice(&bytes);
            }
            let position = u32::try_from(index.records.len()).map_err(|_| AuditError::Broken {
                path: path.clone(),
                seq: index.chain.next_seq,
                message: "more records than one index holds".to_string(),
            })?;
            index.records.push(Place {
                file: at as u32,
                offset,
                len: n as u32,
                hash,
            });
            index
                .by_resource
                .entry(resource)
                .or_default()
                .push(position);
            offset += n as u64;
            index.bytes_read += n as u64;
        }
        index.files[at].indexed = offset;
        Ok(())
    }
}

/// The record in `line`, if it still hashes to what the index linked.
fn record_at(
    path: &Path,
    seq: u64,
    line: &[u8],
    linked: &[u8; 32],
) -> Result<AuditRecord, AuditError> {
    let broken = |message: String| AuditError::Broken {
        path: path.to_path_buf(),
        seq,
        message,
    };
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|_| {
        broken("the record changed after it was checked (it no longer parses)".into())
    })?;
    let stated = value
        .get("hash")
        .and_then(|h| h.as_str())
        .unwrap_or_default();
    if hex::encode(linked) != stated || super::record_hash(&value) != stated {
        return Err(broken(
            "the record changed after it was checked (its hash no longer matches)".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| broken(format!("not an audit record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, AuditSink, FileAuditLog, read_all};

    fn entry(resource: &str) -> AuditEntry {
        AuditEntry {
            principal: "p".to_string(),
            tool: "query".to_string(),
            resource: crate::audit::AuditResource::parse(resource),
            decision: "allow".to_string(),
            reason: "test".to_string(),
            ..AuditEntry::default()
        }
    }

    #[tokio::test]
    async fn the_index_serves_what_a_full_read_does_and_reads_only_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // Rotation every few records, so the index follows renamed files.
        let log = FileAuditLog::open(&path, 2_000).unwrap();
        let reader = AuditReader::new(&path);
        let tables = [
            "sales.orders",
            "sales.customers",
            "ops.shipments,sales.orders",
        ];
        for round in 0..4 {
            for i in 0..25 {
                log.append(entry(tables[(i + round) % 3])).await.unwrap();
            }
            let all = read_all(&path).unwrap();
            let (seen, total) = reader.records(|_| true).unwrap();
            assert_eq!(seen, all, "round {round}");
            assert_eq!(total, all.len());
            let (orders, _) = reader.records(|r| r == "sales.orders").unwrap();
            let expected: Vec<AuditRecord> = all
                .iter()
                .filter(|r| r.entry.resource.names() == ["sales.orders"])
                .cloned()
                .collect();
            assert_eq!(orders, expected);
        }
        let segments = crate::audit::segments(&path).unwrap();
        assert!(segments.len() > 2, "the log rotated");
        // Eight queries over four rounds of appends read each byte of the log once.
        let log_bytes: u64 = segments
            .iter()
            .map(|s| std::fs::metadata(s).unwrap().len())
            .sum();
        assert_eq!(reader.index.lock().unwrap().bytes_read, log_bytes);
        // A record edited after it was indexed is reported, not shown.
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"decision\":\"allow\"", "\"decision\":\"deny!\"", 1);
        assert_eq!(edited.len(), text.len());
        std::fs::write(&path, edited).unwrap();
        let e = reader.records(|_| true).map(|_| ()).unwrap_err();
        assert!(
            e.to_string().contains("changed after it was checked"),
            "{e}"
        );
        // A log cut short is re-read from the start, which finds where the chain breaks.
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert_eq!(
            reader.records(|_| true).unwrap().0,
            read_all(&path).unwrap(),
            "rebuilt after the cut"
        );
        drop(log);
    }
}
