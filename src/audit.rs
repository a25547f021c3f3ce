//! Audit: one record per action, allowed or denied, appended to a hash-chained JSON-lines log and made durable
//! (written and fsynced) before the caller's reply is sent.
//!
//! Each record carries `seq`, `prev_hash` and `hash` = SHA-256 over the canonical JSON (sorted keys, no `hash`
//! field) of the record, so an edit, deletion, insertion or reorder breaks the chain at a known `seq`.
//! A torn last line (a crash mid-write, never acknowledged) is cut off when the log is opened.
//!
//! Invariant: `append` returns only after the record is on disk; a record that cannot be written is an error
//! that the gate turns into a failed call, never a silently lost record.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash that precedes the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as the gate reports it; the log adds `seq`, `time` and the chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Principal id of the caller.
    pub principal: String,
    /// MCP tool (or resource read) that was called.
    pub tool: String,
    /// Policy action checked, e.g. `query`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// What it was on: `*`, a namespace, `ns.table`, or several tables comma-joined.
    pub resource: String,
    /// `allowed`, `denied` or `error`.
    pub decision: String,
    /// Why (the policy's reason, or the error).
    pub reason: String,
    /// Policies that decided it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_ids: Vec<String>,
    /// Purpose the caller stated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// SQL text of a query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// SHA-256 of the SQL text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql_digest: Option<String>,
    /// Snapshot ids read, `ns.table@id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// Rows returned to the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes of result returned to the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Wall time of the call in milliseconds.
    pub duration_ms: u64,
    /// Error text when the call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A record as stored: the entry plus its place in the chain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// RFC 3339 time the record was appended.
    pub time: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// Hash of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 of this record's canonical form.
    pub hash: String,
}

/// Failure to write or read the log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}, record {seq}: {message}")]
    Broken {
        path: PathBuf,
        seq: u64,
        message: String,
    },
}

/// Where audit records go. Contract: `append` returns the record's `seq` only once it is durable.
#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Appends one record and makes it durable.
    async fn append(&self, entry: AuditEntry) -> Result<u64, AuditError>;
}

/// Columns of the audit log as a governed table (`parley.audit_log`).
pub fn to_batch(records: &[AuditRecord]) -> datafusion::arrow::array::RecordBatch {
    use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let text = |f: &dyn Fn(&AuditRecord) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(records.iter().map(f).collect::<Vec<_>>()))
    };
    let num = |f: &dyn Fn(&AuditRecord) -> Option<u64>| -> ArrayRef {
        Arc::new(UInt64Array::from(records.iter().map(f).collect::<Vec<_>>()))
    };
    let time: ArrayRef = Arc::new(
        TimestampMicrosecondArray::from(
            records
                .iter()
                .map(|r| {
                    chrono::DateTime::parse_from_rfc3339(&r.time)
                        .ok()
                        .map(|t| t.timestamp_micros())
                })
                .collect::<Vec<_>>(),
        )
        .with_timezone("+00:00"),
    );
    let columns: Vec<(&str, DataType, ArrayRef)> = vec![
        ("seq", DataType::UInt64, num(&|r| Some(r.seq))),
        (
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            time,
        ),
        (
            "principal",
            DataType::Utf8,
            text(&|r| Some(r.entry.principal.clone())),
        ),
        (
            "tool",
            DataType::Utf8,
            text(&|r| Some(r.entry.tool.clone())),
        ),
        ("action", DataType::Utf8, text(&|r| r.entry.action.clone())),
        (
            "resource",
            DataType::Utf8,
            text(&|r| Some(r.entry.resource.clone())),
        ),
        (
            "decision",
            DataType::Utf8,
            text(&|r| Some(r.entry.decision.clone())),
        ),
        (
            "reason",
            DataType::Utf8,
            text(&|r| Some(r.entry.reason.clone())),
        ),
        (
            "purpose",
            DataType::Utf8,
            text(&|r| r.entry.purpose.clone()),
        ),
        ("sql", DataType::Utf8, text(&|r| r.entry.sql.clone())),
        (
            "sql_digest",
            DataType::Utf8,
            text(&|r| r.entry.sql_digest.clone()),
        ),
        ("rows", DataType::UInt64, num(&|r| r.entry.rows)),
        ("bytes", DataType::UInt64, num(&|r| r.entry.bytes)),
        (
            "duration_ms",
            DataType::UInt64,
            num(&|r| Some(r.entry.duration_ms)),
        ),
        ("error", DataType::Utf8, text(&|r| r.entry.error.clone())),
        ("hash", DataType::Utf8, text(&|r| Some(r.hash.clone()))),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, t, _)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    datafusion::arrow::array::RecordBatch::try_new(
        schema,
        columns.into_iter().map(|(_, _, a)| a).collect(),
    )
    .expect("audit columns match their schema")
}

/// One pending append: the entry and where to send its `seq` once durable.
struct Job {
    entry: AuditEntry,
    done: tokio::sync::oneshot::Sender<Result<u64, String>>,
}

/// The embedded audit log: JSON-lines files in a directory — `audit.jsonl` (active) and rotated segments
/// `audit.<first seq>.jsonl`, one chain across all of them.
///
/// Appends go to one writer thread that commits in groups: every append waiting when a write starts shares its
/// single fsync, so many concurrent calls cost one disk flush.
pub struct FileAuditLog {
    path: PathBuf,
    jobs: std::sync::mpsc::Sender<Job>,
}

/// Writer-thread state.
struct Writer {
    path: PathBuf,
    file: File,
    len: u64,
    seq: u64,
    head: String,
    rotate_bytes: u64,
}

/// Sorts object keys recursively so a hash does not depend on field order.
pub(crate) fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), canonical(&map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// SHA-256 (hex) over the canonical JSON of `record` without its `hash` field.
fn record_hash(record: &Value) -> String {
    let mut v = record.clone();
    if let Value::Object(map) = &mut v {
        map.remove("hash");
    }
    let bytes = serde_json::to_vec(&canonical(&v)).expect("JSON values serialize");
    hex::encode(Sha256::digest(&bytes))
}

/// SHA-256 (hex) of a text, e.g. the SQL of a query.
pub fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Result of checking a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub count: u64,
    /// Hash of the last record.
    pub head: String,
}

/// The files of the log whose active file is `path`, oldest first: rotated segments, then the active file.
pub fn segments(path: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut rotated: Vec<(u64, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let seq = name
                    .strip_prefix(&format!("{stem}."))?
                    .strip_suffix(".jsonl")?
                    .parse::<u64>()
                    .ok()?;
                Some((seq, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(source) => {
            return Err(AuditError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(path.to_path_buf());
    Ok(out)
}

/// Checks every link of the chain across all segments, from `from` (a seq; earlier records are read but their
/// hashes are trusted); returns the first broken record.
pub fn verify(path: &Path, from: Option<u64>) -> Result<Verified, AuditError> {
    let mut chain = Chain::new(from.unwrap_or(1));
    for segment in segments(path)? {
        let torn = read_segment(&segment, false, &mut chain, &mut |_| {})?;
        debug_assert!(torn.is_none());
    }
    Ok(Verified {
        count: chain.count,
        head: chain.prev,
    })
}

/// Every record of the log, oldest first, after checking the chain.
pub fn read_all(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let mut chain = Chain::new(1);
    let mut out = Vec::new();
    for segment in segments(path)? {
        // The active file may end in a torn line while the server runs; it was never acknowledged.
        read_segment(&segment, true, &mut chain, &mut |r| out.push(r))?;
    }
    Ok(out)
}

/// Running state of a chain check.
struct Chain {
    prev: String,
    next_seq: u64,
    count: u64,
    check_from: u64,
}

impl Chain {
    fn new(check_from: u64) -> Chain {
        Chain {
            prev: GENESIS_HASH.to_string(),
            next_seq: 1,
            count: 0,
            check_from,
        }
    }
}

/// Reads one segment into `chain`, handing each record to `each`. With `tolerate_torn_tail`, an unterminated last
/// line is skipped and its byte offset returned so the caller can cut it off.
fn read_segment(
    path: &Path,
    tolerate_torn_tail: bool,
    chain: &mut Chain,
    each: &mut dyn FnMut(AuditRecord),
) -> Result<Option<u64>, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut reader = BufReader::new(file);
    let mut offset: u64 = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io)?;
        if n == 0 {
            return Ok(None);
        }
        let expected_seq = chain.next_seq;
        let broken = |message: String| AuditError::Broken {
            path: path.to_path_buf(),
            seq: expected_seq,
            message,
        };
        if !line.ends_with('\n') {
            if tolerate_torn_tail {
                return Ok(Some(offset));
            }
            return Err(broken(
                "last line is incomplete (torn write); opening the log repairs it".into(),
            ));
        }
        let value: Value = serde_json::from_str(line.trim_end())
            .map_err(|e| broken(format!("not a JSON record: {e}")))?;
        let record: AuditRecord = serde_json::from_value(value.clone())
            .map_err(|e| broken(format!("not an audit record: {e}")))?;
        if record.seq != expected_seq && expected_seq >= chain.check_from {
            return Err(broken(format!(
                "sequence number is {}, expected {expected_seq} (a record was deleted, inserted or moved)",
                record.seq
            )));
        }
        if record.seq >= chain.check_from {
            if record.seq > chain.check_from && record.prev_hash != chain.prev {
                return Err(broken(
                    "prev_hash does not match the previous record's hash (a record was deleted, inserted or moved)"
                        .into(),
                ));
            }
            if record_hash(&value) != record.hash {
                return Err(broken(
                    "hash does not match the record's content (the record was edited)".into(),
                ));
            }
        }
        chain.prev = record.hash.clone();
        chain.next_seq = record.seq + 1;
        chain.count += 1;
        offset += n as u64;
        each(record);
    }
}

impl FileAuditLog {
    /// Opens (or creates) the log whose active file is `path`, cuts off a torn last line, checks the chain so
    /// appends continue it, and starts the writer thread. The active file is rotated once it reaches
    /// `rotate_bytes`.
    pub fn open(path: &Path, rotate_bytes: u64) -> Result<FileAuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // Under the cross-process lock: another server on this data dir may be mid-append, and its half-written
        // line must not be mistaken for a torn one.
        file.lock().map_err(io)?;
        let mut chain = Chain::new(1);
        let all = segments(path)?;
        let (active, rotated) = all.split_last().expect("the active file is always listed");
        for segment in rotated {
            read_segment(segment, false, &mut chain, &mut |_| {})?;
        }
        let torn_at = read_segment(active, true, &mut chain, &mut |_| {})?;
        if let Some(at) = torn_at {
            tracing::warn!(
                path = %path.display(),
                offset = at,
                "audit log ends in a torn record that was never acknowledged; cutting it off"
            );
            file.set_len(at).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.unlock().map_err(io)?;
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut writer = Writer {
            path: path.to_path_buf(),
            file,
            len,
            seq: chain.next_seq - 1,
            head: chain.prev,
            rotate_bytes: rotate_bytes.max(1),
        };
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("parley-audit".to_string())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(FileAuditLog {
            path: path.to_path_buf(),
            jobs,
        })
    }

    /// Path of the active file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The last complete record of a segment file.
fn last_record(path: &Path) -> std::io::Result<Option<AuditRecord>> {
    let mut last = None;
    for line in BufReader::new(File::open(path)?).lines() {
        if let Ok(r) = serde_json::from_str::<AuditRecord>(&line?) {
            last = Some(r);
        }
    }
    Ok(last)
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len()
}

/// Most appends one group commit takes.
const MAX_GROUP: usize = 4096;

impl Writer {
    fn run(&mut self, rx: std::sync::mpsc::Receiver<Job>) {
        // Ends when every sender (the log) is dropped.
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let (jobs, entries): (Vec<_>, Vec<_>) =
                group.into_iter().map(|j| (j.done, j.entry)).unzip();
            match self.commit(entries) {
                Ok(first_seq) => {
                    for (i, done) in jobs.into_iter().enumerate() {
                        let _ = done.send(Ok(first_seq + i as u64));
                    }
                }
                Err(e) => {
                    tracing::error!("audit write failed: {e}");
                    for done in jobs {
                        let _ = done.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    /// Writes `entries` as consecutive records with one fsync; returns the first seq. On failure the file is cut
    /// back to where it was, so no half-group stays behind.
    /// Takes the cross-process lock on the active file and catches up with records other processes (another
    /// `parley serve` on the same data dir) appended or a rotation they made, so the chain stays one.
    fn lock_and_catch_up(&mut self) -> std::io::Result<()> {
        loop {
            self.file.lock()?;
            let same = match (self.file.metadata(), std::fs::metadata(&self.path)) {
                (Ok(a), Ok(b)) => same_file(&a, &b),
                _ => false,
            };
            if same {
                break;
            }
            // Another process rotated the file: follow the path to the new active file, and take the chain's
            // head from the newest rotated segment in case the new file is still empty.
            self.file.unlock()?;
            self.file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)?;
            self.len = 0;
            let rotated = segments(&self.path).map_err(std::io::Error::other)?;
            if let Some(newest) = rotated.iter().rev().nth(1)
                && let Some(r) = last_record(newest)?
            {
                self.seq = r.seq;
                self.head = r.hash;
            }
        }
        let len = self.file.metadata()?.len();
        if len > self.len {
            let mut reader = BufReader::new(File::open(&self.path)?);
            reader.seek(SeekFrom::Start(self.len))?;
            let mut line = String::new();
            let mut last = None;
            while reader.read_line(&mut line)? > 0 {
                if line.ends_with('\n')
                    && let Ok(r) = serde_json::from_str::<AuditRecord>(line.trim_end())
                {
                    last = Some(r);
                }
                line.clear();
            }
            if let Some(r) = last {
                self.seq = r.seq;
                self.head = r.hash;
            }
            self.len = len;
        }
        Ok(())
    }

    fn commit(&mut self, entries: Vec<AuditEntry>) -> Result<u64, AuditError> {
        let path = self.path.clone();
        let locked = self.lock_and_catch_up();
        if let Err(source) = locked {
            return Err(AuditError::Io { path, source });
        }
        let result = self.commit_locked(entries);
        let _ = self.file.unlock();
        result
    }

    fn commit_locked(&mut self, entries: Vec<AuditEntry>) -> Result<u64, AuditError> {
        let path = self.path.clone();
        let io = |source| AuditError::Io { path, source };
        let first_seq = self.seq + 1;
        let mut seq = self.seq;
        let mut head = self.head.clone();
        let mut buf = Vec::new();
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for entry in entries {
            seq += 1;
            let mut record = serde_json::to_value(AuditRecord {
                seq,
                time: time.clone(),
                entry,
                prev_hash: head.clone(),
                hash: String::new(),
            })
            .expect("audit records serialize");
            head = record_hash(&record);
            record["hash"] = Value::String(head.clone());
            serde_json::to_writer(&mut buf, &canonical(&record)).expect("JSON values serialize");
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(io(e));
        }
        self.len += buf.len() as u64;
        self.seq = seq;
        self.head = head;
        if self.len >= self.rotate_bytes {
            let path = self.path.clone();
            self.rotate()
                .map_err(|source| AuditError::Io { path, source })?;
        }
        Ok(first_seq)
    }

    /// Moves the active file aside as `<stem>.<first seq>.jsonl` and starts a new one; the chain continues.
    fn rotate(&mut self) -> std::io::Result<()> {
        let first_seq = {
            let mut reader = BufReader::new(File::open(&self.path)?);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            serde_json::from_str::<AuditRecord>(&line)
                .map(|r| r.seq)
                .map_err(std::io::Error::other)?
        };
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let rotated = self
            .path
            .with_file_name(format!("{stem}.{first_seq:012}.jsonl"));
        std::fs::rename(&self.path, &rotated)?;
        self.file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.len = 0;
        Ok(())
    }
}

#[async_trait::async_trait]
impl AuditSink for FileAuditLog {
    async fn append(&self, entry: AuditEntry) -> Result<u64, AuditError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let gone = || AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("the audit writer has stopped"),
        };
        self.jobs.send(Job { entry, done }).map_err(|_| gone())?;
        wait.await
            .map_err(|_| gone())?
            .map_err(|message| AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(message),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            principal: "analyst".into(),
            tool: "query".into(),
            resource: format!("sales.t{i}"),
            decision: "allowed".into(),
            reason: "ok".into(),
            duration_ms: i,
            ..Default::default()
        }
    }

    async fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = FileAuditLog::open(&path, u64::MAX).unwrap();
        for i in 0..n {
            assert_eq!(log.append(entry(i)).await.unwrap(), i + 1);
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn broken_seq(path: &Path) -> u64 {
        match verify(path, None) {
            Err(AuditError::Broken { seq, .. }) => seq,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn chain_verifies_and_continues_after_reopen() {
        let (_d, path) = log_with(5).await;
        assert_eq!(verify(&path, None).unwrap().count, 5);
        let log = FileAuditLog::open(&path, u64::MAX).unwrap();
        assert_eq!(log.append(entry(9)).await.unwrap(), 6);
        assert_eq!(verify(&path, None).unwrap().count, 6);
    }

    #[tokio::test]
    async fn edits_deletions_and_reorders_are_detected_at_the_right_seq() {
        let (_d, path) = log_with(6).await;
        let original = lines(&path);

        let mut edited = original.clone();
        edited[2] = edited[2].replace("sales.t2", "sales.tX");
        write_lines(&path, &edited);
        assert_eq!(broken_seq(&path), 3);

        let mut deleted = original.clone();
        deleted.remove(3);
        write_lines(&path, &deleted);
        assert_eq!(broken_seq(&path), 4);

        let mut swapped = original.clone();
        swapped.swap(1, 2);
        write_lines(&path, &swapped);
        assert_eq!(broken_seq(&path), 2);

        write_lines(&path, &original);
        assert_eq!(verify(&path, None).unwrap().count, 6);
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(FileAuditLog::open(&path, u64::MAX).unwrap());
        let mut tasks = Vec::new();
        for t in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    seqs.push(log.append(entry(t * 1000 + i)).await.unwrap());
                }
                seqs
            }));
        }
        let mut all: Vec<u64> = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        assert_eq!(all, (1..=800).collect::<Vec<u64>>());
        assert_eq!(verify(&path, None).unwrap().count, 800);
    }

    #[tokio::test]
    async fn rotation_keeps_one_chain_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = FileAuditLog::open(&path, 2_000).unwrap();
        for i in 0..40 {
            log.append(entry(i)).await.unwrap();
        }
        drop(log);
        let files = segments(&path).unwrap();
        assert!(files.len() > 2, "rotated: {files:?}");
        assert_eq!(verify(&path, None).unwrap().count, 40);
        assert_eq!(read_all(&path).unwrap().len(), 40);
        // Reopening continues the chain in the active file.
        let log = FileAuditLog::open(&path, 2_000).unwrap();
        assert_eq!(log.append(entry(99)).await.unwrap(), 41);
        // Deleting a whole rotated segment breaks the chain where it was.
        std::fs::remove_file(&files[1]).unwrap();
        assert!(verify(&path, None).is_err());
    }

    #[tokio::test]
    async fn verify_from_skips_earlier_damage() {
        let (_d, path) = log_with(6).await;
        let mut l = lines(&path);
        l[1] = l[1].replace("sales.t1", "sales.tX");
        write_lines(&path, &l);
        assert_eq!(broken_seq(&path), 2);
        assert_eq!(verify(&path, Some(3)).unwrap().count, 6);
    }

    #[tokio::test]
    async fn two_writers_on_one_file_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // Two logs on the same file stand for two `parley serve` processes on one data dir.
        let a = FileAuditLog::open(&path, 3_000).unwrap();
        let b = FileAuditLog::open(&path, 3_000).unwrap();
        for i in 0..30 {
            let log = if i % 3 == 0 { &a } else { &b };
            assert_eq!(log.append(entry(i)).await.unwrap(), i + 1);
        }
        assert_eq!(verify(&path, None).unwrap().count, 30);
    }

    #[tokio::test]
    async fn torn_tail_is_cut_on_open() {
        let (_d, path) = log_with(3).await;
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":4,\"time\":\"2026");
        std::fs::write(&path, &text).unwrap();
        assert!(verify(&path, None).is_err());
        let log = FileAuditLog::open(&path, u64::MAX).unwrap();
        assert_eq!(log.append(entry(4)).await.unwrap(), 4);
        assert_eq!(verify(&path, None).unwrap().count, 4);
    }
}
