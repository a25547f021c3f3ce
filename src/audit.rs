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
use std::sync::{Arc, Mutex};

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

struct LogState {
    file: File,
    seq: u64,
    head: String,
}

/// The embedded audit log: a JSON-lines file in the data dir.
pub struct FileAuditLog {
    path: PathBuf,
    state: Arc<Mutex<LogState>>,
}

/// Sorts object keys recursively so the hash does not depend on field order.
fn canonical(value: &Value) -> Value {
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

/// Result of checking a whole log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub count: u64,
    /// Hash of the last record.
    pub head: String,
}

/// Reads the log at `path` and checks every link of the chain; returns the first broken record.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    let (records, _) = read_chain(path, false)?;
    Ok(Verified {
        count: records.len() as u64,
        head: records
            .last()
            .map_or(GENESIS_HASH.to_string(), |r| r.hash.clone()),
    })
}

/// Reads every record of the log. With `tolerate_torn_tail`, an unterminated last line is ignored and its byte
/// offset returned so the caller can cut it off.
fn read_chain(
    path: &Path,
    tolerate_torn_tail: bool,
) -> Result<(Vec<AuditRecord>, Option<u64>), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], None)),
        Err(e) => return Err(io(e)),
    };
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut prev = GENESIS_HASH.to_string();
    let mut offset: u64 = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io)?;
        if n == 0 {
            return Ok((records, None));
        }
        let expected_seq = records.len() as u64 + 1;
        let broken = |message: String| AuditError::Broken {
            path: path.to_path_buf(),
            seq: expected_seq,
            message,
        };
        if !line.ends_with('\n') {
            if tolerate_torn_tail {
                return Ok((records, Some(offset)));
            }
            return Err(broken(
                "last line is incomplete (torn write); opening the log repairs it".into(),
            ));
        }
        let value: Value = serde_json::from_str(line.trim_end())
            .map_err(|e| broken(format!("not a JSON record: {e}")))?;
        let record: AuditRecord = serde_json::from_value(value.clone())
            .map_err(|e| broken(format!("not an audit record: {e}")))?;
        if record.seq != expected_seq {
            return Err(broken(format!(
                "sequence number is {}, expected {expected_seq} (a record was deleted, inserted or moved)",
                record.seq
            )));
        }
        if record.prev_hash != prev {
            return Err(broken(
                "prev_hash does not match the previous record's hash (a record was deleted, inserted or moved)"
                    .into(),
            ));
        }
        let actual = record_hash(&value);
        if actual != record.hash {
            return Err(broken(
                "hash does not match the record's content (the record was edited)".into(),
            ));
        }
        prev = record.hash.clone();
        offset += n as u64;
        records.push(record);
    }
}

impl FileAuditLog {
    /// Opens (or creates) the log at `path`, cuts off a torn last line, and checks the chain so appends continue
    /// it.
    pub fn open(path: &Path) -> Result<FileAuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let (records, torn_at) = read_chain(path, true)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if let Some(at) = torn_at {
            tracing::warn!(
                path = %path.display(),
                offset = at,
                "audit log ends in a torn record that was never acknowledged; cutting it off"
            );
            file.set_len(at).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let (seq, head) = records
            .last()
            .map_or((0, GENESIS_HASH.to_string()), |r| (r.seq, r.hash.clone()));
        Ok(FileAuditLog {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(LogState { file, seq, head })),
        })
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append_blocking(
        state: &Mutex<LogState>,
        path: &Path,
        entry: AuditEntry,
    ) -> Result<u64, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        // A poisoned lock means a writer panicked mid-append; the file itself is still consistent up to the
        // last complete line, so keep going with the state as it was.
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let seq = st.seq + 1;
        let mut record = serde_json::to_value(AuditRecord {
            seq,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            entry,
            prev_hash: st.head.clone(),
            hash: String::new(),
        })
        .expect("audit records serialize");
        let hash = record_hash(&record);
        record["hash"] = Value::String(hash.clone());
        let mut line = serde_json::to_vec(&canonical(&record)).expect("JSON values serialize");
        line.push(b'\n');
        st.file.write_all(&line).map_err(io)?;
        st.file.sync_data().map_err(io)?;
        st.seq = seq;
        st.head = hash;
        Ok(seq)
    }
}

#[async_trait::async_trait]
impl AuditSink for FileAuditLog {
    async fn append(&self, entry: AuditEntry) -> Result<u64, AuditError> {
        let state = self.state.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || Self::append_blocking(&state, &path, entry))
            .await
            .map_err(|e| AuditError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
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
        let log = FileAuditLog::open(&path).unwrap();
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
        match verify(path) {
            Err(AuditError::Broken { seq, .. }) => seq,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn chain_verifies_and_continues_after_reopen() {
        let (_d, path) = log_with(5).await;
        assert_eq!(verify(&path).unwrap().count, 5);
        let log = FileAuditLog::open(&path).unwrap();
        assert_eq!(log.append(entry(9)).await.unwrap(), 6);
        assert_eq!(verify(&path).unwrap().count, 6);
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
        assert_eq!(verify(&path).unwrap().count, 6);
    }

    #[tokio::test]
    async fn torn_tail_is_cut_on_open() {
        let (_d, path) = log_with(3).await;
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":4,\"time\":\"2026");
        std::fs::write(&path, &text).unwrap();
        assert!(verify(&path).is_err());
        let log = FileAuditLog::open(&path).unwrap();
        assert_eq!(log.append(entry(4)).await.unwrap(), 4);
        assert_eq!(verify(&path).unwrap().count, 4);
    }
}
