//! Audit anchors: signed checkpoints of the audit chain's head, kept apart from the log (as CloudTrail's signed
//! digest files), so what the chain alone cannot show is detected: the log truncated at a line boundary, its last
//! records deleted, or the whole file removed.
//!
//! A checkpoint is `(seq, hash, time)` signed with the server's Ed25519 audit key. The audit writer appends one
//! (fsynced) whenever it is idle after a commit, or every [`CHECKPOINT_EVERY`] records under load, so at rest the
//! newest checkpoint vouches for the newest record. A log is consistent with its anchors when every checkpoint's
//! record exists with that hash. The records written after the newest checkpoint (at most the last group under
//! load) are vouched for by nothing but the chain.
//!
//! Limits, stated plainly: the key lives on the same machine as the log. Anyone who can write both the log and
//! the anchor directory with the key can forge a consistent history; pin the public key (`parley audit verify
//! --public-key`) and keep the anchor directory on storage the server can append to but not rewrite to raise
//! that bar.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Records appended under load between two checkpoints, at most.
pub const CHECKPOINT_EVERY: u64 = 1000;

const DOMAIN: &str = "parley-audit-checkpoint-v1";

/// One signed statement: "the audit chain's record `seq` has hash `hash`", made at `time`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// Sequence number of the record vouched for.
    pub seq: u64,
    /// Its chain hash.
    pub hash: String,
    /// When the checkpoint was made (RFC 3339).
    pub time: String,
    /// Hex of the Ed25519 public key that signed it.
    pub key: String,
    /// Hex of the signature over the domain, seq, hash and time.
    pub signature: String,
}

impl Checkpoint {
    fn message(seq: u64, hash: &str, time: &str) -> Vec<u8> {
        format!("{DOMAIN}\n{seq}\n{hash}\n{time}").into_bytes()
    }

    /// Whether the signature is valid and made by `key`.
    fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        hex::encode(key.to_bytes()) == self.key
            && key
                .verify(&Self::message(self.seq, &self.hash, &self.time), &signature)
                .is_ok()
    }
}

/// Why the anchors and the log disagree, or the anchors cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot use the audit anchor {path}: {message}")]
    Unusable { path: PathBuf, message: String },
    #[error(
        "checkpoint {line} of {path} is not validly signed by the audit key {key}: the anchor file was edited or \
         signed with another key"
    )]
    BadSignature {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error(
        "the audit log ends at record {log_seq}, but a checkpoint signed at {time} vouches for record {seq}: \
         records were deleted or the log was truncated"
    )]
    Truncated {
        seq: u64,
        time: String,
        log_seq: u64,
    },
    #[error(
        "record {seq} of the audit log has hash {found}, but a checkpoint signed at {time} vouches for {expected}: \
         the log was replaced or rewritten"
    )]
    Mismatch {
        seq: u64,
        time: String,
        expected: String,
        found: String,
    },
}

/// The anchor directory of a log: the signing key and the checkpoint file.
pub struct Anchor {
    path: PathBuf,
    key: SigningKey,
    file: File,
    /// The newest checkpoint this process wrote or found.
    last: Option<Checkpoint>,
}

impl Anchor {
    /// Opens `dir` (creating it and a new audit key when missing), reading and verifying its checkpoints.
    pub fn open(dir: &Path) -> Result<(Anchor, Vec<Checkpoint>), AnchorError> {
        let unusable = |path: &Path, message: String| AnchorError::Unusable {
            path: path.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| unusable(dir, e.to_string()))?;
        let key_path = dir.join("ed25519.pem");
        let key = load_or_create_key(&key_path).map_err(|e| unusable(&key_path, e))?;
        let path = dir.join("checkpoints.jsonl");
        let checkpoints = read_remembering(&path, &key, &dir.join(VERIFIED))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| unusable(&path, e.to_string()))?;
        let last = checkpoints.last().cloned();
        Ok((
            Anchor {
                path,
                key,
                file,
                last,
            },
            checkpoints,
        ))
    }

    /// The newest checkpoint.
    pub fn last(&self) -> Option<&Checkpoint> {
        self.last.as_ref()
    }

    /// Signs and durably appends a checkpoint of record `seq` with `hash`, unless the newest already says so.
    pub fn checkpoint(&mut self, seq: u64, hash: &str) -> std::io::Result<()> {
        if seq == 0
            || self
                .last
                .as_ref()
                .is_some_and(|c| c.seq == seq && c.hash == hash)
        {
            return Ok(());
        }
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let signature = self.key.sign(&Checkpoint::message(seq, hash, &time));
        let checkpoint = Checkpoint {
            seq,
            hash: hash.to_string(),
            time,
            key: hex::encode(self.key.verifying_key().to_bytes()),
            signature: hex::encode(signature.to_bytes()),
        };
        let mut line = serde_json::to_vec(&checkpoint).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.last = Some(checkpoint);
        Ok(())
    }

    /// Path of the checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The checkpoints in `path`, each verified against `key`. A torn last line (a crash mid-append) is skipped.
pub fn read(path: &Path, key: &VerifyingKey) -> Result<Vec<Checkpoint>, AnchorError> {
    let Some(bytes) = read_bytes(path)? else {
        return Ok(vec![]);
    };
    parse(path, &bytes, 0, key)
}

fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, AnchorError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AnchorError::Unusable {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// The checkpoints in `bytes` (the file `path`), each verified against `key` — except those on lines that end
/// within the first `trusted` bytes, already authenticated as a whole (see [`read_remembering`]).
fn parse(
    path: &Path,
    bytes: &[u8],
    trusted: usize,
    key: &VerifyingKey,
) -> Result<Vec<Checkpoint>, AnchorError> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let end = start + line.len();
        start = end + 1;
        if line.is_empty() {
            continue;
        }
        let bad = || AnchorError::BadSignature {
            path: path.to_path_buf(),
            line: i + 1,
            key: hex::encode(key.to_bytes()),
        };
        let checkpoint: Checkpoint = serde_json::from_slice(line).map_err(|_| bad())?;
        if end >= trusted && !checkpoint.verify(key) {
            return Err(bad());
        }
        out.push(checkpoint);
    }
    Ok(out)
}

/// The MAC of `data` remembered in [`VERIFIED`]: HMAC-SHA256 under a key derived from the secret audit key.
fn prefix_mac(key: &SigningKey, data: &[u8]) -> Vec<u8> {
    use hmac::Mac as _;
    let derived: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::new()
            .chain_update(b"parley-audit-checkpoints-verified-v1\n")
            .chain_update(key.to_bytes())
            .finalize()
            .into()
    };
    // HMAC takes a key of any length; were it refused, no tag would match and every line would be verified.
    let Ok(mut m) = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&derived) else {
        return Vec::new();
    };
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Beside the checkpoints: how many of their first bytes were verified, and a MAC of those bytes under a key
/// derived from the audit key.
const VERIFIED: &str = "checkpoints.verified";

/// [`read`] for the server, which holds the secret audit key: checkpoints whose signatures it verified before are
/// not verified again (an Ed25519 verification each, ~60 µs — a server with a million checkpoints spent a minute
/// at every start). What it verified is remembered in [`VERIFIED`] as a length and an HMAC-SHA256 of those bytes
/// under a key derived from the secret key; at the next start, a prefix of that length with that MAC is
/// authenticated as a whole, and only the lines after it are verified one by one. Whoever cannot sign checkpoints
/// cannot make that MAC either, so an edited or inserted checkpoint anywhere is still refused as before (the MAC
/// no longer matches, and every line is verified). `parley audit verify`, which holds only the public key, always
/// verifies every signature ([`read`]).
fn read_remembering(
    path: &Path,
    key: &SigningKey,
    verified: &Path,
) -> Result<Vec<Checkpoint>, AnchorError> {
    let Some(bytes) = read_bytes(path)? else {
        return Ok(vec![]);
    };
    let trusted = std::fs::read_to_string(verified)
        .ok()
        .and_then(|text| {
            let (len, tag) = text.trim().split_once(' ')?;
            let len: usize = len.parse().ok()?;
            let tag = hex::decode(tag).ok()?;
            (len <= bytes.len() && prefix_mac(key, &bytes[..len]) == tag).then_some(len)
        })
        .unwrap_or(0);
    let checkpoints = parse(path, &bytes, trusted, &key.verifying_key())?;
    // Every complete line is verified now: remember them (written aside, then renamed; a failure only costs the
    // next start the verifications).
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if end > trusted {
        let mac = hex::encode(prefix_mac(key, &bytes[..end]));
        crate::demo::remember(
            verified,
            "verified checkpoints",
            "the next start verifies them again",
            |out| std::io::Write::write_all(out, format!("{end} {mac}\n").as_bytes()),
        );
    }
    Ok(checkpoints)
}

/// The public key of the audit key in `dir`, if one exists.
pub fn public_key(dir: &Path) -> Result<Option<VerifyingKey>, String> {
    let path = dir.join("ed25519.pem");
    if !path.exists() {
        return Ok(None);
    }
    load_or_create_key(&path).map(|k| Some(k.verifying_key()))
}

/// Parses a hex public key (as `audit verify` prints it).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .map_err(|e| format!("not hex: {e}"))?
        .try_into()
        .map_err(|_| "an Ed25519 public key is 32 bytes (64 hex digits)".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// Checks `checkpoints` against the log: `hash_of(seq)` is the hash of record `seq` (None when the log has no
/// such record), `log_seq` the log's last record.
pub fn check(
    checkpoints: &[Checkpoint],
    log_seq: u64,
    mut hash_of: impl FnMut(u64) -> Option<String>,
) -> Result<(), AnchorError> {
    // The newest claim first: it says how much is missing.
    if let Some(c) = checkpoints.iter().max_by_key(|c| c.seq)
        && c.seq > log_seq
    {
        return Err(AnchorError::Truncated {
            seq: c.seq,
            time: c.time.clone(),
            log_seq,
        });
    }
    for c in checkpoints {
        match hash_of(c.seq) {
            Some(found) if found == c.hash => {}
            found => {
                return Err(AnchorError::Mismatch {
                    seq: c.seq,
                    time: c.time.clone(),
                    expected: c.hash.clone(),
                    found: found.unwrap_or_else(|| "nothing (the record is missing)".to_string()),
                });
            }
        }
    }
    Ok(())
}

fn load_or_create_key(path: &Path) -> Result<SigningKey, String> {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    if path.exists() {
        let pem = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        return SigningKey::from_pkcs8_pem(&pem).map_err(|e| e.to_string());
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| e.to_string())?;
    std::fs::write(path, pem.as_bytes()).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_signed_and_checked_against_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut anchor, found) = Anchor::open(dir.path()).unwrap();
        assert!(found.is_empty());
        anchor.checkpoint(3, "h3").unwrap();
        anchor.checkpoint(3, "h3").unwrap();
        anchor.checkpoint(7, "h7").unwrap();
        let (_, found) = Anchor::open(dir.path()).unwrap();
        assert_eq!(
            found.len(),
            2,
            "an unchanged head is not checkpointed twice"
        );
        let log = |seq: u64| Some(format!("h{seq}"));
        check(&found, 7, log).unwrap();
        check(&found, 9, log).unwrap();
        assert!(matches!(
            check(&found, 5, log),
            Err(AnchorError::Truncated { seq: 7, .. })
        ));
        assert!(matches!(
            check(&found, 7, |s| Some(format!("x{s}"))),
            Err(AnchorError::Mismatch { seq: 3, .. })
        ));
        // An edited checkpoint no longer verifies.
        let path = dir.path().join("checkpoints.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"seq\":7", "\"seq\":8")).unwrap();
        assert!(matches!(
            Anchor::open(dir.path()),
            Err(AnchorError::BadSignature { line: 2, .. })
        ));
        // Checkpoints signed by another key are refused when the key is pinned.
        let other = SigningKey::generate(&mut rand_core::OsRng).verifying_key();
        std::fs::write(&path, text).unwrap();
        assert!(read(&path, &other).is_err());
        let own = public_key(dir.path()).unwrap().unwrap();
        assert_eq!(read(&path, &own).unwrap().len(), 2);
        assert_eq!(parse_public_key(&hex::encode(own.to_bytes())).unwrap(), own);
    }

    #[test]
    fn verified_checkpoints_are_remembered_under_the_secret_key_and_edits_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        let verified = dir.path().join(VERIFIED);
        let (mut anchor, _) = Anchor::open(dir.path()).unwrap();
        for seq in 1..=5 {
            anchor.checkpoint(seq, &format!("h{seq}")).unwrap();
        }
        drop(anchor);
        let own = public_key(dir.path()).unwrap().unwrap();
        let all = read(&path, &own).unwrap();
        // The first start verifies every line and remembers them; the next reads the same checkpoints back.
        for _ in 0..2 {
            let (_, found) = Anchor::open(dir.path()).unwrap();
            assert_eq!(found, all);
            let text = std::fs::read_to_string(&verified).unwrap();
            assert!(text.starts_with(&format!("{} ", std::fs::metadata(&path).unwrap().len())));
        }
        let text = std::fs::read_to_string(&path).unwrap();

        // Remembered lines are not verified again: a line whose signature was damaged under a valid MAC loads
        // (only the secret key makes that MAC), while `audit verify`, holding the public key, still refuses it.
        let damaged = text.replacen("\"signature\":\"", "\"signature\":\"00", 1);
        std::fs::write(&path, &damaged).unwrap();
        let key = load_or_create_key(&dir.path().join("ed25519.pem")).unwrap();
        let mac = hex::encode(prefix_mac(&key, damaged.as_bytes()));
        std::fs::write(&verified, format!("{} {mac}\n", damaged.len())).unwrap();
        assert_eq!(Anchor::open(dir.path()).unwrap().1.len(), 5);
        assert!(read(&path, &own).is_err());

        // An edited line (same length) no longer matches the MAC: every line is verified, the edit refused.
        std::fs::write(&path, &text).unwrap();
        assert!(Anchor::open(dir.path()).is_ok());
        std::fs::write(
            &path,
            text.replacen("\"hash\":\"h3\"", "\"hash\":\"h9\"", 1),
        )
        .unwrap();
        assert!(matches!(
            Anchor::open(dir.path()),
            Err(AnchorError::BadSignature { line: 3, .. })
        ));
        // A forged MAC counts for nothing; a badly signed line after the remembered ones is refused.
        std::fs::write(&path, &text).unwrap();
        std::fs::write(&verified, format!("{} {}\n", text.len(), "ab".repeat(32))).unwrap();
        assert_eq!(Anchor::open(dir.path()).unwrap().1, all);
        let mut appended = text.clone();
        appended.push_str(
            &text
                .lines()
                .next()
                .unwrap()
                .replace("\"seq\":1", "\"seq\":6"),
        );
        appended.push('\n');
        std::fs::write(&path, appended).unwrap();
        assert!(matches!(
            Anchor::open(dir.path()),
            Err(AnchorError::BadSignature { line: 6, .. })
        ));
    }
}
