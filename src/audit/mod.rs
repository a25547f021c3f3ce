//! Audit: one record per action, allowed or denied, appended to a hash-chained JSON-lines log and made durable
//! (written and fsynced) before the caller's reply is sent.
//!
//! Each record carries `seq`, `prev_hash` and `hash` = SHA-256 over the canonical JSON (sorted keys, no `hash`
//! field) of the record, so an edit, deletion, insertion or reorder breaks the chain at a known `seq`.
//! A torn last line (a crash mid-write, never acknowledged) is cut off when the log is opened.
//!
//! Invariant: `append` returns only after the record is on disk; a record that cannot be written is an error
//! that the gate turns into a failed call, never a silently lost record.

pub mod reader;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash that precedes the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an audited action was on: the tables (or namespace, or other names) it touched, none meaning `*`.
///
/// Stored as one string — `*`, or the names comma-joined, as since the first record — so the canonical form, and
/// with it every record's hash, is unchanged; in code it is the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditResource(Vec<String>);

impl AuditResource {
    /// The names an action touched, in the order it touched them, each once.
    pub fn of<S: AsRef<str>>(names: &[S]) -> AuditResource {
        let mut out: Vec<String> = Vec::new();
        for n in names {
            let n = n.as_ref();
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
        AuditResource(out)
    }

    /// Reads the stored form (`*` or comma-joined names).
    pub fn parse(text: &str) -> AuditResource {
        if text == "*" || text.is_empty() {
            AuditResource(Vec::new())
        } else {
            AuditResource(text.split(',').map(str::to_string).collect())
        }
    }

    /// The names (empty for `*`).
    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// Whether `name` is one of them.
    pub fn names_any(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }
}

impl std::fmt::Display for AuditResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("*")
        } else {
            f.write_str(&self.0.join(","))
        }
    }
}

impl Serialize for AuditResource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AuditResource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AuditResource, D::Error> {
        let text = String::deserialize(d)?;
        Ok(AuditResource::parse(&text))
    }
}

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
    /// What it was on: nothing in particular (`*`), a namespace, a table, or several tables.
    pub resource: AuditResource,
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
    /// The log disagrees with its signed checkpoints (see [`crate::anchor`]).
    #[error("audit log {path}: {source}")]
    Anchor {
        path: PathBuf,
        source: crate::anchor::AnchorError,
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
            text(&|r| Some(r.entry.resource.to_string())),
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
    /// Taken when the log is dropped, which ends the writer.
    jobs: Option<std::sync::mpsc::Sender<Box<Job>>>,
    /// The writer's state: the writer thread commits what is queued; a caller who finds nothing queued and the
    /// state free commits its own record (see `append`).
    shared: Shared,
    /// Records sent to the writer thread and not yet taken by it.
    queued: Arc<AtomicUsize>,
    /// The caller's last own commit took longer than [`SLOW_SYNC`] (see `append`).
    slow_sync: AtomicBool,
    /// Records callers committed themselves since the writer thread last looked.
    own: Arc<AtomicU64>,
    /// The writer thread, joined when the log is dropped (its last act is a checkpoint of the final head).
    writer: Option<std::thread::JoinHandle<()>>,
    /// The check of the whole chain that opening started (see [`check_in_background`]).
    check: std::sync::Mutex<Option<std::thread::JoinHandle<Result<Verified, AuditError>>>>,
}

/// Writer-thread state.
struct Writer {
    path: PathBuf,
    file: File,
    len: u64,
    seq: u64,
    head: String,
    rotate_bytes: u64,
    /// Where signed checkpoints of the head go, when the log is anchored.
    anchor: Option<crate::anchor::Anchor>,
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

/// Writes `value` as the compact JSON of [`canonical`]`(value)`, leaving out the top-level key `skip`: the same
/// bytes, without building the sorted copy.
fn write_canonical(out: &mut impl Write, value: &Value, skip: Option<&str>) -> std::io::Result<()> {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().filter(|k| Some(k.as_str()) != skip).collect();
            keys.sort();
            out.write_all(b"{")?;
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, k)?;
                out.write_all(b":")?;
                write_canonical(out, &map[k], None)?;
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(out, item, None)?;
            }
            out.write_all(b"]")
        }
        scalar => Ok(serde_json::to_writer(out, scalar)?),
    }
}

/// Feeds what is written into a SHA-256.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SHA-256 (hex) over the canonical JSON of `record` without its `hash` field.
fn record_hash(record: &Value) -> String {
    let mut hasher = HashWriter(Sha256::new());
    write_canonical(&mut hasher, record, Some("hash")).expect("hashing does not fail");
    hex::encode(hasher.0.finalize())
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
        let torn = read_segment(&segment, false, &mut chain, None)?;
        debug_assert!(torn.is_none());
    }
    Ok(Verified {
        count: chain.count,
        head: chain.prev,
    })
}

/// [`verify`], and the log against the signed checkpoints in `anchor_dir`, verified with `key` (the audit key
/// found there when `None`). Returns the checkpoints checked.
pub fn verify_anchored(
    path: &Path,
    from: Option<u64>,
    anchor_dir: &Path,
    key: Option<ed25519_dalek::VerifyingKey>,
) -> Result<(Verified, Vec<crate::anchor::Checkpoint>), AuditError> {
    let anchor_error = |source| AuditError::Anchor {
        path: path.to_path_buf(),
        source,
    };
    let key = match key {
        Some(k) => Some(k),
        None => crate::anchor::public_key(anchor_dir).map_err(|message| {
            anchor_error(crate::anchor::AnchorError::Unusable {
                path: anchor_dir.to_path_buf(),
                message,
            })
        })?,
    };
    let checkpoints = match &key {
        Some(k) => {
            crate::anchor::read(&anchor_dir.join("checkpoints.jsonl"), k).map_err(anchor_error)?
        }
        None => vec![],
    };
    let mut chain = Chain::vouched(from.unwrap_or(1), &checkpoints);
    for segment in segments(path)? {
        read_segment(&segment, false, &mut chain, None)?;
    }
    chain.check_anchors(path, &checkpoints)?;
    Ok((
        Verified {
            count: chain.count,
            head: chain.prev,
        },
        checkpoints,
    ))
}

/// Every record of the log, oldest first, after checking the chain.
pub fn read_all(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    let mut chain = Chain::new(1);
    let mut out = Vec::new();
    for segment in segments(path)? {
        // The active file may end in a torn line while the server runs; it was never acknowledged.
        read_segment(&segment, true, &mut chain, Some(&mut |r| out.push(r)))?;
    }
    Ok(out)
}

/// Running state of a chain check.
struct Chain {
    prev: String,
    next_seq: u64,
    count: u64,
    check_from: u64,
    /// The last record to read, if not the end.
    stop_at: Option<u64>,
    /// Hashes of the records with these seqs, as read (the records that checkpoints vouch for).
    wanted: std::collections::HashMap<u64, Option<String>>,
}

impl Chain {
    fn new(check_from: u64) -> Chain {
        Chain {
            prev: GENESIS_HASH.to_string(),
            next_seq: 1,
            count: 0,
            check_from,
            stop_at: None,
            wanted: Default::default(),
        }
    }

    /// A chain check that also notes the hashes of the records `checkpoints` vouch for.
    fn vouched(check_from: u64, checkpoints: &[crate::anchor::Checkpoint]) -> Chain {
        let mut chain = Chain::new(check_from);
        chain.wanted = checkpoints.iter().map(|c| (c.seq, None)).collect();
        chain
    }

    /// Checks one complete line (with its newline) as the next record of the chain and moves the chain past
    /// it; returns the record's JSON.
    fn link(&mut self, path: &Path, line: &str) -> Result<Value, AuditError> {
        let expected_seq = self.next_seq;
        let broken = |message: String| AuditError::Broken {
            path: path.to_path_buf(),
            seq: expected_seq,
            message,
        };
        let value: Value = serde_json::from_str(line.trim_end())
            .map_err(|e| broken(format!("not a JSON record: {e}")))?;
        let link = Link::of(&value).ok_or_else(|| {
            broken("not an audit record: seq, prev_hash or hash is missing".into())
        })?;
        if link.seq != expected_seq && expected_seq >= self.check_from {
            return Err(broken(format!(
                "sequence number is {}, expected {expected_seq} (a record was deleted, inserted or moved)",
                link.seq
            )));
        }
        if link.seq >= self.check_from {
            if link.seq > self.check_from && link.prev_hash != self.prev {
                return Err(broken(
                    "prev_hash does not match the previous record's hash (a record was deleted, inserted or moved)"
                        .into(),
                ));
            }
            if record_hash(&value) != link.hash {
                return Err(broken(
                    "hash does not match the record's content (the record was edited)".into(),
                ));
            }
        }
        let seq = link.seq;
        if let Some(slot) = self.wanted.get_mut(&seq) {
            *slot = Some(link.hash.to_string());
        }
        self.prev.clear();
        self.prev.push_str(link.hash);
        self.next_seq = seq + 1;
        self.count += 1;
        Ok(value)
    }

    /// Checks the checkpoints against what was read.
    fn check_anchors(
        &self,
        path: &Path,
        checkpoints: &[crate::anchor::Checkpoint],
    ) -> Result<(), AuditError> {
        crate::anchor::check(checkpoints, self.next_seq.saturating_sub(1), |seq| {
            self.wanted.get(&seq).cloned().flatten()
        })
        .map_err(|source| AuditError::Anchor {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Reads one segment into `chain`, handing each record to `each` (when given). With `tolerate_torn_tail`, an
/// unterminated last line is skipped and its byte offset returned so the caller can cut it off. Stops after the
/// record `chain.stop_at`.
fn read_segment(
    path: &Path,
    tolerate_torn_tail: bool,
    chain: &mut Chain,
    each: Option<&mut dyn FnMut(AuditRecord)>,
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
    read_open_segment(path, file, tolerate_torn_tail, chain, each)
}

/// [`read_segment`] on a file already open (it may have been renamed since: see [`check_in_background`]).
fn read_open_segment(
    path: &Path,
    file: File,
    tolerate_torn_tail: bool,
    chain: &mut Chain,
    mut each: Option<&mut dyn FnMut(AuditRecord)>,
) -> Result<Option<u64>, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut offset: u64 = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io)?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with('\n') {
            if tolerate_torn_tail {
                return Ok(Some(offset));
            }
            return Err(AuditError::Broken {
                path: path.to_path_buf(),
                seq: chain.next_seq,
                message: "last line is incomplete (torn write); opening the log repairs it".into(),
            });
        }
        let value = chain.link(path, &line)?;
        let seq = chain.next_seq - 1;
        offset += n as u64;
        if let Some(each) = each.as_mut() {
            each(
                serde_json::from_value(value).map_err(|e| AuditError::Broken {
                    path: path.to_path_buf(),
                    seq,
                    message: format!("not an audit record: {e}"),
                })?,
            );
        }
        if chain.stop_at == Some(seq) {
            return Ok(None);
        }
    }
}

/// What links a record into the chain, read from its JSON without decoding the rest.
struct Link<'a> {
    seq: u64,
    prev_hash: &'a str,
    hash: &'a str,
}

impl<'a> Link<'a> {
    fn of(record: &'a Value) -> Option<Link<'a>> {
        Some(Link {
            seq: record.get("seq")?.as_u64()?,
            prev_hash: record.get("prev_hash")?.as_str()?,
            hash: record.get("hash")?.as_str()?,
        })
    }
}

impl FileAuditLog {
    /// Opens (or creates) the log whose active file is `path`, cuts off a torn last line, checks the chain so
    /// appends continue it, and starts the writer thread. The active file is rotated once it reaches
    /// `rotate_bytes`.
    pub fn open(path: &Path, rotate_bytes: u64) -> Result<FileAuditLog, AuditError> {
        Self::open_anchored(path, rotate_bytes, None)
    }

    /// [`FileAuditLog::open`] with the log anchored by signed checkpoints in `anchor_dir` (see
    /// [`crate::anchor`]). Opening compares the log's head with the newest checkpoint: a log that ends before a
    /// checkpointed record, or whose checkpointed head was rewritten, is recorded in the log itself (a record
    /// naming what is missing) before anything else is served; a torn last line that is cut off is kept in a file
    /// beside the log and recorded too. Older checkpoints are checked by the background chain check.
    pub fn open_anchored(
        path: &Path,
        rotate_bytes: u64,
        anchor_dir: Option<&Path>,
    ) -> Result<FileAuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut findings: Vec<AuditEntry> = Vec::new();
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
        let (end, last) = last_line(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if end < len {
            // The cut bytes are kept: they may be a torn write, or what is left of records cut mid-line.
            let kept = keep_tail(path, end, len).map_err(io)?;
            tracing::warn!(
                path = %path.display(),
                offset = end,
                kept = %kept.display(),
                "audit log ends in an unterminated line that was never acknowledged; cutting it off"
            );
            file.set_len(end).map_err(io)?;
            file.sync_all().map_err(io)?;
            findings.push(finding(
                "audit/repair",
                format!(
                    "cut {} bytes of an unterminated last line at offset {end} of {} (a write never acknowledged, or \
                     records cut mid-line); the bytes are kept in {}",
                    len - end,
                    path.display(),
                    kept.display()
                ),
            ));
        }
        let head = match last {
            Some(line) => Some(head_of(path, &line)?),
            // A new log, or one just rotated: the head is the last record of the newest rotated segment.
            None => {
                let mut head = None;
                for segment in segments(path)?.iter().rev().skip(1) {
                    let (_, last) = last_line(segment).map_err(|source| AuditError::Io {
                        path: segment.clone(),
                        source,
                    })?;
                    if let Some(line) = last {
                        head = Some(head_of(segment, &line)?);
                        break;
                    }
                }
                head
            }
        };
        file.unlock().map_err(io)?;
        let (seq, head) = head.unwrap_or_else(|| (0, GENESIS_HASH.to_string()));
        let (anchor, checkpoints) = match anchor_dir {
            Some(dir) => {
                let (anchor, checkpoints) =
                    crate::anchor::Anchor::open(dir).map_err(|source| AuditError::Anchor {
                        path: path.to_path_buf(),
                        source,
                    })?;
                (Some(anchor), checkpoints)
            }
            None => (None, vec![]),
        };
        if let Some(newest) = checkpoints.last() {
            let gap = if newest.seq > seq {
                Some(crate::anchor::AnchorError::Truncated {
                    seq: newest.seq,
                    time: newest.time.clone(),
                    log_seq: seq,
                })
            } else if newest.seq == seq && newest.hash != head {
                Some(crate::anchor::AnchorError::Mismatch {
                    seq,
                    time: newest.time.clone(),
                    expected: newest.hash.clone(),
                    found: head.clone(),
                })
            } else {
                None
            };
            if let Some(gap) = gap {
                tracing::error!(path = %path.display(), "{gap}");
                findings.push(finding("audit/anchor", gap.to_string()));
            }
        }
        let vouched: Vec<_> = checkpoints.into_iter().filter(|c| c.seq <= seq).collect();
        let check = check_in_background(path.to_path_buf(), seq, vouched).map_err(io)?;
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        let mut writer = Writer {
            path: path.to_path_buf(),
            file,
            len,
            seq,
            head,
            rotate_bytes: rotate_bytes.max(1),
            anchor,
        };
        // What opening found is on record before the first action is served.
        if !findings.is_empty() {
            writer.commit(findings)?;
        }
        writer.checkpoint();
        let (jobs, rx) = std::sync::mpsc::channel::<Box<Job>>();
        let shared: Shared = Arc::new(std::sync::Mutex::new(writer));
        let queued = Arc::new(AtomicUsize::new(0));
        let own = Arc::new(AtomicU64::new(0));
        let thread = {
            let (shared, queued, own) = (shared.clone(), queued.clone(), own.clone());
            std::thread::Builder::new()
                .name("parley-audit".to_string())
                .spawn(move || run(shared, rx, queued, own))
                .map_err(io)?
        };
        Ok(FileAuditLog {
            path: path.to_path_buf(),
            jobs: Some(jobs),
            shared,
            queued,
            slow_sync: AtomicBool::new(false),
            own,
            writer: Some(thread),
            check: std::sync::Mutex::new(Some(check)),
        })
    }

    /// Path of the active file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the check of the chain that opening started, and returns its outcome (`None` once taken).
    pub fn checked(&self) -> Option<Result<Verified, AuditError>> {
        let check = self
            .check
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        check.join().ok()
    }
}

/// A record of something opening the log found (a repair, a gap against the checkpoints).
fn finding(tool: &str, reason: String) -> AuditEntry {
    AuditEntry {
        principal: "parley".to_string(),
        tool: tool.to_string(),
        resource: AuditResource::of(&["audit"]),
        decision: "error".to_string(),
        reason,
        ..Default::default()
    }
}

/// Copies the bytes `end..len` of the log at `path` into a file beside it (fsynced) and returns its path.
fn keep_tail(path: &Path, end: u64, len: u64) -> std::io::Result<PathBuf> {
    use std::io::Read;
    let mut bytes = vec![0; (len - end) as usize];
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(end))?;
    file.read_exact(&mut bytes)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let kept = path.with_file_name(format!(
        "{}.cut-{stamp}",
        path.file_name()
            .map_or("audit".into(), |n| n.to_string_lossy())
    ));
    let mut out = File::create(&kept)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    Ok(kept)
}

/// Where the last complete line of the file at `path` ends, and that line; bytes past that end are a torn line.
/// Read backwards from the end, so opening a log costs the same however long it has grown.
fn last_line(path: &Path) -> std::io::Result<(u64, Option<String>)> {
    use std::io::Read;
    const BLOCK: u64 = 1 << 16;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, None)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // The bytes from `pos` to the end of the file.
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    let mut end = None;
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        tail = block;
        pos = start;
        if end.is_none() {
            end = tail
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| pos + i as u64 + 1);
        }
        if let Some(end) = end {
            let newline = (end - 1 - pos) as usize;
            let begin = match tail[..newline].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if pos == 0 => 0,
                None => continue,
            };
            let line = String::from_utf8_lossy(&tail[begin..newline]).into_owned();
            return Ok((end, Some(line)));
        }
    }
    Ok((0, None))
}

/// The `seq` and `hash` of the record `line`, the last of `path`, after checking its hash: the chain continues
/// from it.
fn head_of(path: &Path, line: &str) -> Result<(u64, String), AuditError> {
    let broken = |seq, message: &str| AuditError::Broken {
        path: path.to_path_buf(),
        seq,
        message: format!(
            "{message}; the log cannot be continued (`parley audit verify` checks all of it)"
        ),
    };
    let value: Value = serde_json::from_str(line.trim_end())
        .map_err(|_| broken(0, "the last line is not a JSON record"))?;
    let link = Link::of(&value).ok_or_else(|| broken(0, "the last line is not an audit record"))?;
    if record_hash(&value) != link.hash {
        return Err(broken(
            link.seq,
            "the last record's hash does not match its content (it was edited)",
        ));
    }
    Ok((link.seq, link.hash.to_string()))
}

/// Checks the whole chain, up to record `head` (the last one when the log was opened), on a thread of its own,
/// and logs the outcome: a break is an error naming the record. Every file is opened before reading starts, so a
/// rotation meanwhile (the active file renamed) does not hide one, and records appended after `head` are not
/// read. Opening reads only the log's last record, so that start-up does not grow with the log's age.
fn check_in_background(
    path: PathBuf,
    head: u64,
    checkpoints: Vec<crate::anchor::Checkpoint>,
) -> std::io::Result<std::thread::JoinHandle<Result<Verified, AuditError>>> {
    std::thread::Builder::new()
        .name("parley-audit-check".to_string())
        .spawn(move || {
            let started = std::time::Instant::now();
            let checked = check_up_to(&path, head, &checkpoints);
            match &checked {
                Ok(v) => tracing::info!(
                    records = v.count,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "audit chain verified up to the head at start-up"
                ),
                Err(e) => tracing::error!(
                    "the audit chain is broken: {e}; records are still appended after the head, but the log \
                     has been altered: investigate, and run `parley audit verify`"
                ),
            }
            checked
        })
}

fn check_up_to(
    path: &Path,
    head: u64,
    checkpoints: &[crate::anchor::Checkpoint],
) -> Result<Verified, AuditError> {
    let mut chain = Chain::vouched(1, checkpoints);
    chain.stop_at = Some(head);
    if head == 0 {
        return Ok(Verified {
            count: 0,
            head: chain.prev,
        });
    }
    // Another process may rotate between listing and opening: list again.
    let mut files = Vec::new();
    for attempt in 0..3 {
        files.clear();
        let listed = segments(path)?;
        let last = listed.len() - 1;
        let mut vanished = false;
        for (i, segment) in listed.into_iter().enumerate() {
            match File::open(&segment) {
                Ok(f) => files.push((segment, f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && i < last && attempt < 2 => {
                    vanished = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && i == last => {}
                Err(source) => {
                    return Err(AuditError::Io {
                        path: segment,
                        source,
                    });
                }
            }
        }
        if !vanished {
            break;
        }
    }
    let count = files.len();
    for (i, (segment, file)) in files.into_iter().enumerate() {
        read_open_segment(&segment, file, i + 1 == count, &mut chain, None)?;
        if chain.next_seq > head {
            chain.check_anchors(path, checkpoints)?;
            return Ok(Verified {
                count: chain.count,
                head: chain.prev,
            });
        }
    }
    Err(AuditError::Broken {
        path: path.to_path_buf(),
        seq: chain.next_seq,
        message: format!("the log ends before record {head}, its last record when it was opened"),
    })
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

/// A caller's own commit slower than this lends its worker to blocking work the next time (see `append`).
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(2);

/// How often the audit writer looks for callers' own commits while no checkpoint is due (see `run`): a record
/// written by its caller is vouched for by a checkpoint within this plus [`CHECKPOINT_AFTER_IDLE`].
const IDLE_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the audit writer waits idle before it signs a checkpoint of the head.
const CHECKPOINT_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer's state, shared by the writer thread and callers that append themselves when it is idle (see
/// [`FileAuditLog`]'s `append`).
type Shared = Arc<std::sync::Mutex<Writer>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Writer> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One commit, where a panic inside it does not end the writer or poison its lock: every later action would then
/// wait for a record that is never written. Its callers get an error instead (their results are withheld, as for
/// any failed write) and the log goes on with the next records.
fn commit_guarded(writer: &mut Writer, entries: Vec<AuditEntry>) -> Result<u64, AuditError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.commit(entries)))
        .unwrap_or_else(|_| {
            Err(AuditError::Io {
                path: writer.path.clone(),
                source: std::io::Error::other("the audit writer failed while writing a record"),
            })
        })
}

/// The writer thread: group commits of what was queued, and checkpoints.
///
/// Callers' own commits (see `append`) do not wake it — a wake-up on every call, and a thread competing for a core
/// just when the client wakes to read its reply — but count in `own`, which it reads when it looks: every
/// [`IDLE_LOOK`] while no checkpoint is due, every [`CHECKPOINT_AFTER_IDLE`] while one is.
fn run(
    shared: Shared,
    rx: std::sync::mpsc::Receiver<Box<Job>>,
    queued: Arc<AtomicUsize>,
    own: Arc<AtomicU64>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut since_checkpoint: u64 = 0;
    let mut group = Vec::new();
    // Ends when every sender (the log) is dropped.
    loop {
        // A checkpoint after the replies, so it costs the callers nothing: once the log has been idle for
        // CHECKPOINT_AFTER_IDLE (at rest the newest checkpoint vouches for the newest record), and every
        // CHECKPOINT_EVERY records under load. Not at the first idle instant: an agent's next call usually
        // follows its reply within milliseconds, and its record would wait behind the checkpoint's fsync.
        let wait = if since_checkpoint > 0 {
            CHECKPOINT_AFTER_IDLE
        } else {
            IDLE_LOOK
        };
        let first = match rx.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let committed_by_callers = own.swap(0, Ordering::AcqRel);
        since_checkpoint += committed_by_callers;
        let Some(first) = first else {
            // Idle since the last look, unless callers committed meanwhile (then it waits for them to rest, as
            // long as they stay under CHECKPOINT_EVERY records).
            if since_checkpoint >= crate::anchor::CHECKPOINT_EVERY
                || (committed_by_callers == 0 && since_checkpoint > 0)
            {
                lock(&shared).checkpoint();
                since_checkpoint = 0;
            }
            continue;
        };
        // Every record waiting joins the group, up to MAX_GROUP.
        let mut next = Some(first);
        while let Some(job) = next.take() {
            queued.fetch_sub(1, Ordering::AcqRel);
            group.push(*job);
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        since_checkpoint += group.len() as u64;
        let (jobs, entries): (Vec<_>, Vec<_>) = group.drain(..).map(|j| (j.done, j.entry)).unzip();
        let committed = commit_guarded(&mut lock(&shared), entries);
        match committed {
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
        if since_checkpoint >= crate::anchor::CHECKPOINT_EVERY {
            lock(&shared).checkpoint();
            since_checkpoint = 0;
        }
    }
    // Every sender gone: the final head is vouched for.
    lock(&shared).checkpoint();
}

impl Writer {
    /// Signs a checkpoint of the chain's head (under the log's cross-process lock, so it is the true head); a
    /// failure is logged, never fails an action.
    fn checkpoint(&mut self) {
        if self.anchor.is_none()
            || self
                .anchor
                .as_ref()
                .and_then(|a| a.last())
                .is_some_and(|c| c.seq == self.seq && c.hash == self.head)
        {
            return;
        }
        if let Err(e) = self.lock_and_catch_up() {
            tracing::error!("cannot lock the audit log for a checkpoint: {e}");
            return;
        }
        let (seq, head) = (self.seq, self.head.clone());
        if let Some(anchor) = self.anchor.as_mut()
            && let Err(e) = anchor.checkpoint(seq, &head)
        {
            tracing::error!(path = %anchor.path().display(), "cannot write an audit checkpoint: {e}");
        }
        let _ = self.file.unlock();
    }

    /// Writes `entries` as consecutive records with one fsync; returns the first seq. On failure the file is cut
    /// back to where it was, so no half-group stays behind.
    /// Takes the cross-process lock on the active file and catches up with records other processes (another
    /// `parley serve` on the same data dir) appended or a rotation they made, so the chain stays one.
    fn lock_and_catch_up(&mut self) -> std::io::Result<()> {
        let len = loop {
            self.file.lock()?;
            // The open file's length comes with the check that it is still the one at the path.
            match (self.file.metadata(), std::fs::metadata(&self.path)) {
                (Ok(a), Ok(b)) if same_file(&a, &b) => break a.len(),
                _ => {}
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
                && let (_, Some(line)) = last_line(newest)?
            {
                let (seq, head) = head_of(newest, &line).map_err(std::io::Error::other)?;
                self.seq = seq;
                self.head = head;
            }
        };
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
        let io = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        let first_seq = self.seq + 1;
        let unencodable =
            |e: serde_json::Error| std::io::Error::other(format!("unencodable record: {e}"));
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
            .map_err(|e| io(unencodable(e)))?;
            head = record_hash(&record);
            record["hash"] = Value::String(head.clone());
            write_canonical(&mut buf, &record, None).map_err(io)?;
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

impl Drop for FileAuditLog {
    fn drop(&mut self) {
        // Ends the writer once it has committed what was queued, and lets it checkpoint the final head.
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[async_trait::async_trait]
impl AuditSink for FileAuditLog {
    async fn append(&self, entry: AuditEntry) -> Result<u64, AuditError> {
        let gone = || AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("the audit writer has stopped"),
        };
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        // When nothing is queued and no commit runs, the caller commits its own record, on its own thread:
        // handing it to the writer thread and back costs two thread wake-ups, a fraction of a millisecond each
        // once threads went idle — most of an idle agent's round trip. Under load records queue for the writer
        // thread's group commits as before. Only on a multi-threaded runtime, where the other workers go on with
        // other tasks meanwhile.
        let lendable = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if lendable
            && self.queued.load(Ordering::Acquire) == 0
            && let Ok(mut writer) = self.shared.try_lock()
        {
            // While syncs are quick the worker writes the record itself. Lending it to blocking work
            // (`block_in_place`) wakes another thread to take the worker's queue and, once the record is
            // durable, hands the reply to yet another thread — two wake-ups on an idle agent's round trip,
            // about a third of it. After a sync slower than `SLOW_SYNC` the worker is lent, so a slow disk
            // holds no worker's other tasks; the next quick sync goes back to writing directly.
            let slow = self.slow_sync.load(Ordering::Relaxed);
            let started = std::time::Instant::now();
            let committed = if slow {
                tokio::task::block_in_place(|| commit_guarded(&mut writer, vec![entry]))
            } else {
                commit_guarded(&mut writer, vec![entry])
            };
            drop(writer);
            self.slow_sync
                .store(started.elapsed() > SLOW_SYNC, Ordering::Relaxed);
            // The writer thread counts it towards its next checkpoint when it looks, and signs one once the log
            // rests.
            self.own.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = &committed {
                tracing::error!("audit write failed: {e}");
            }
            return committed;
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.queued.fetch_add(1, Ordering::AcqRel);
        if jobs.send(Box::new(Job { entry, done })).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(gone());
        }
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

    #[test]
    fn a_resource_is_stored_as_before_and_read_back_as_a_list() {
        // `*`, one name, several: the stored string is what the gate wrote before the type, so hashes hold.
        for (names, stored) in [
            (vec![], "*"),
            (vec!["sales.orders"], "sales.orders"),
            (
                vec!["sales.orders", "sales.customers", "sales.orders"],
                "sales.orders,sales.customers",
            ),
        ] {
            let r = AuditResource::of(&names);
            assert_eq!(serde_json::to_value(&r).unwrap(), serde_json::json!(stored));
            let back: AuditResource = serde_json::from_value(serde_json::json!(stored)).unwrap();
            assert_eq!(back, r);
            assert_eq!(AuditResource::parse(stored), r);
        }
        assert!(AuditResource::parse("a.b,c.d").names_any("c.d"));
        assert!(!AuditResource::parse("a.b,c.d").names_any("c"));
    }
    use serde_json::json;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            principal: "analyst".into(),
            tool: "query".into(),
            resource: AuditResource::of(&[format!("sales.t{i}")]),
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

    /// On a multi-threaded runtime a caller who finds the writer idle commits its own record; under concurrency
    /// records queue for the writer thread. Mixed, across two logs on one file (two processes) and rotations, the
    /// chain stays one, every seq is handed out once, and the log at rest is checkpointed at its head.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn callers_appending_themselves_and_queued_records_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let anchors = dir.path().join("anchor");
        let a = Arc::new(FileAuditLog::open_anchored(&path, 20_000, Some(&anchors)).unwrap());
        let b = Arc::new(FileAuditLog::open_anchored(&path, 20_000, Some(&anchors)).unwrap());
        // One at a time (the caller's own commits), then many at once (queued), then one at a time again.
        let mut seqs = Vec::new();
        for i in 0..20 {
            seqs.push(a.append(entry(i)).await.unwrap());
        }
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let log = if t % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..40 {
                    seqs.push(log.append(entry(t * 1000 + i)).await.unwrap());
                }
                seqs
            }));
        }
        for t in tasks {
            seqs.extend(t.await.unwrap());
        }
        for i in 0..20 {
            seqs.push(b.append(entry(9000 + i)).await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=360).collect::<Vec<u64>>());
        assert!(segments(&path).unwrap().len() > 2, "rotated");
        assert_eq!(verify(&path, None).unwrap().count, 360);
        // At rest, the newest checkpoint vouches for the head, though the last records never passed the
        // writer thread.
        let newest = || {
            crate::anchor::Anchor::open(&anchors)
                .unwrap()
                .1
                .last()
                .map(|c| c.seq)
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while newest() != Some(360) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(newest(), Some(360));
        drop((a, b));
        assert_eq!(verify(&path, None).unwrap().count, 360);
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
    async fn opening_reads_the_tail_and_checks_the_rest_in_the_background() {
        let (_d, path) = log_with(6).await;
        let mut l = lines(&path);
        l[1] = l[1].replace("sales.t1", "sales.tX");
        write_lines(&path, &l);
        // An old record was edited: the log opens and continues from its head, and the check names the record.
        let log = FileAuditLog::open(&path, u64::MAX).unwrap();
        assert_eq!(log.append(entry(7)).await.unwrap(), 7);
        match log.checked() {
            Some(Err(AuditError::Broken { seq: 2, .. })) => {}
            other => panic!("expected the check to find record 2 broken, got {other:?}"),
        }
        assert!(log.checked().is_none());
        // The last record edited: the chain cannot be continued from it.
        let (_d, path) = log_with(3).await;
        let mut l = lines(&path);
        l[2] = l[2].replace("sales.t2", "sales.tX");
        write_lines(&path, &l);
        match FileAuditLog::open(&path, u64::MAX) {
            Err(AuditError::Broken {
                seq: 3, message, ..
            }) => {
                assert!(message.contains("edited"), "{message}")
            }
            other => panic!("expected record 3 broken, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn the_background_check_stops_at_the_head_while_appends_rotate_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        /// `tasks` concurrent tasks appending `each` records.
        async fn append_concurrently(log: &Arc<FileAuditLog>, tasks: u64, each: u64) {
            let mut running = Vec::new();
            for t in 0..tasks {
                let log = log.clone();
                running.push(tokio::spawn(async move {
                    for i in 0..each {
                        log.append(entry(t * 1000 + i)).await.unwrap();
                    }
                }));
            }
            for t in running {
                t.await.unwrap();
            }
        }
        let log = Arc::new(FileAuditLog::open(&path, 20_000).unwrap());
        append_concurrently(&log, 8, 250).await;
        drop(log);
        let head = verify(&path, None).unwrap();
        assert_eq!(head.count, 2000);
        // Reopened, the log rotates under the check many times over.
        let log = Arc::new(FileAuditLog::open(&path, 2_000).unwrap());
        append_concurrently(&log, 4, 100).await;
        assert_eq!(log.checked().unwrap().unwrap(), head);
        assert!(segments(&path).unwrap().len() > 40);
        assert_eq!(verify(&path, None).unwrap().count, 2400);
    }

    #[tokio::test]
    async fn an_empty_active_file_continues_from_the_newest_segment() {
        let (_d, path) = log_with(5).await;
        std::fs::rename(&path, path.with_file_name("audit.000000000001.jsonl")).unwrap();
        std::fs::write(&path, "{\"seq\":6,\"ti").unwrap();
        let log = FileAuditLog::open(&path, u64::MAX).unwrap();
        assert_eq!(log.checked().unwrap().unwrap().count, 5);
        // Record 6 says what opening cut off.
        assert_eq!(log.append(entry(7)).await.unwrap(), 7);
        assert_eq!(verify(&path, None).unwrap().count, 7);
    }

    #[test]
    fn last_line_finds_the_last_complete_line_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let long = "x".repeat(200_000);
        for (text, want) in [
            (String::new(), (0, None)),
            ("torn".to_string(), (0, None)),
            ("a\n".to_string(), (2, Some("a"))),
            ("a\nbc\n".to_string(), (5, Some("bc"))),
            ("a\nbc\ntorn".to_string(), (5, Some("bc"))),
            ("\n".to_string(), (1, Some(""))),
            (format!("{long}\n"), (200_001, Some(long.as_str()))),
            (format!("a\n{long}\n{long}"), (200_003, Some(long.as_str()))),
            (format!("{long}\nb\n"), (200_003, Some("b"))),
        ] {
            std::fs::write(&path, &text).unwrap();
            let (end, line) = last_line(&path).unwrap();
            assert_eq!(
                (end, line.as_deref()),
                want,
                "{:?}",
                &text[..text.len().min(20)]
            );
        }
        assert_eq!(last_line(&dir.path().join("missing")).unwrap(), (0, None));
    }

    #[test]
    fn canonical_hashing_matches_the_sorted_copy() {
        let record = json!({"seq": 3, "b": [{"z": 1, "a": "é\n\"q\""}, 2.5, null], "a": {"y": true, "x": -7},
            "hash": "ignored", "prev_hash": "p"});
        let mut without = record.clone();
        without.as_object_mut().unwrap().remove("hash");
        let bytes = serde_json::to_vec(&canonical(&without)).unwrap();
        assert_eq!(record_hash(&record), hex::encode(Sha256::digest(&bytes)));
        let mut written = Vec::new();
        write_canonical(&mut written, &record, None).unwrap();
        assert_eq!(written, serde_json::to_vec(&canonical(&record)).unwrap());
    }

    #[tokio::test]
    async fn torn_tail_is_cut_on_open() {
        let (_d, path) = log_with(3).await;
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":4,\"time\":\"2026");
        std::fs::write(&path, &text).unwrap();
        assert!(verify(&path, None).is_err());
        let log = FileAuditLog::open(&path, u64::MAX).unwrap();
        assert_eq!(log.append(entry(5)).await.unwrap(), 5);
        drop(log);
        let records = read_all(&path).unwrap();
        assert_eq!(records.len(), 5);
        // The repair is a record of its own, and the cut bytes are kept beside the log.
        let repair = &records[3].entry;
        assert_eq!(repair.tool, "audit/repair");
        let kept = repair.reason.rsplit("kept in ").next().unwrap();
        assert_eq!(
            std::fs::read_to_string(kept).unwrap(),
            "{\"seq\":4,\"time\":\"2026"
        );
    }
}
