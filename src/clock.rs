//! The server's wall clock, which decides whether grants and offers are still in their term.
//!
//! In production it is the system clock. A test moves it forward without waiting out a term: with
//! `PARLEY_CLOCK_FILE` set, the file holds a number of seconds added to the system time, re-read at every
//! reading (a missing or unreadable file adds nothing). Event times in the store and the audit log always use the
//! system clock: they record when something happened, not whether a term has ended.

use std::path::PathBuf;

use chrono::{DateTime, TimeDelta, Utc};

/// The environment variable naming the offset file.
pub const CLOCK_FILE_ENV: &str = "PARLEY_CLOCK_FILE";

/// A wall clock: the system's, or the system's moved forward by a test.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_file: Option<PathBuf>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock, moved by the offset file `PARLEY_CLOCK_FILE` names, if set.
    pub fn from_env() -> Clock {
        Clock {
            offset_file: std::env::var_os(CLOCK_FILE_ENV).map(PathBuf::from),
        }
    }

    /// A clock moved by the seconds written in `path`.
    pub fn with_offset_file(path: impl Into<PathBuf>) -> Clock {
        Clock {
            offset_file: Some(path.into()),
        }
    }

    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        let Some(path) = &self.offset_file else {
            return now;
        };
        let seconds = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite());
        match seconds.and_then(|s| TimeDelta::try_milliseconds((s * 1000.0) as i64)) {
            Some(offset) => now.checked_add_signed(offset).unwrap_or(now),
            None => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_moves_the_clock_by_writing_the_offset_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clock");
        let clock = Clock::with_offset_file(&file);
        // No file yet: the system time.
        assert!((clock.now() - Utc::now()).num_seconds().abs() <= 1);
        std::fs::write(&file, "3600").unwrap();
        let ahead = (clock.now() - Utc::now()).num_seconds();
        assert!((3599..=3601).contains(&ahead), "{ahead}");
        // Garbage is ignored, not a panic.
        std::fs::write(&file, "soon").unwrap();
        assert!((clock.now() - Utc::now()).num_seconds().abs() <= 1);
        std::fs::write(&file, "1e300").unwrap();
        assert!((clock.now() - Utc::now()).num_seconds().abs() <= 1);
        assert!((Clock::system().now() - Utc::now()).num_seconds().abs() <= 1);
    }
}
