//! What each principal may discover, built once per policy version and table list and indexed for `list_tables`:
//! a page is a slice of the sorted tables, and a text search scans one contiguous buffer (memchr's SIMD substring
//! search) instead of following a pointer per table, which on a catalog of thousands of tables is what made
//! listing cost a cache miss per table.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::catalog::TableName;
use crate::gate::Checked;
use crate::identity::Principal;
use crate::policy::Resource;

use super::catalog::TableSummary;

/// A table a principal may discover.
pub struct Discoverable {
    pub name: TableName,
    pub resource: Resource,
    /// Its `list_tables` entry as far as the contract and name make it; a page fills in row count, queryability
    /// and grants.
    pub summary: TableSummary,
    /// Whether the principal may query it, decided the first time a page shows it (the decision depends only on
    /// what keys the cache entry: principal, purpose, policy version and the table's facts).
    pub can_query: OnceLock<bool>,
}

/// The tables a principal may discover, sorted by name, with their search text laid out for scanning.
pub struct Discovered {
    tables: Vec<Discoverable>,
    /// Each table's lower-cased search text, in table order, each followed by a newline (search texts hold none).
    text: String,
    /// Where each table's search text starts in `text`.
    starts: Vec<usize>,
    /// Runs of tables sharing a namespace (tables are sorted by namespace first), with the dot-joined namespace.
    namespaces: Vec<(String, Range<usize>)>,
}

impl Discovered {
    /// Indexes `tables` (sorted by name), each with its search text: name, contract purpose, tags and title.
    pub fn new(tables: Vec<(Discoverable, String)>) -> Discovered {
        let mut text = String::new();
        let mut starts = Vec::with_capacity(tables.len());
        let mut namespaces: Vec<(String, Range<usize>)> = Vec::new();
        let mut out = Vec::with_capacity(tables.len());
        for (i, (table, search)) in tables.into_iter().enumerate() {
            starts.push(text.len());
            text.push_str(&search.to_lowercase().replace('\n', " "));
            text.push('\n');
            match namespaces.last_mut() {
                Some((ns, run)) if *ns == table.summary.namespace => run.end = i + 1,
                _ => namespaces.push((table.summary.namespace.clone(), i..i + 1)),
            }
            out.push(table);
        }
        Discovered {
            tables: out,
            text,
            starts,
            namespaces,
        }
    }

    /// The namespaces of the tables, sorted.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespaces.iter().map(|(ns, _)| ns.as_str())
    }

    /// The tables in `namespace` (when given) whose search text contains `filter` (case-insensitive, when
    /// given): how many there are, and the `limit` of them after the first `offset`.
    pub fn page(
        &self,
        namespace: Option<&str>,
        filter: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<&Discoverable>) {
        let runs: Vec<Range<usize>> = match namespace {
            None => std::iter::once(0..self.tables.len()).collect(),
            Some(ns) => self
                .namespaces
                .iter()
                .filter(|(name, _)| name == ns)
                .map(|(_, run)| run.clone())
                .collect(),
        };
        let mut total = 0;
        let mut page = Vec::with_capacity(limit.min(self.tables.len()));
        // Every text contains the empty string.
        match filter.filter(|f| !f.is_empty()).map(str::to_lowercase) {
            // Runs are counted, not walked.
            None => {
                for run in runs {
                    let skip = offset.saturating_sub(total).min(run.len());
                    let room = limit - page.len();
                    page.extend(self.tables[run.start + skip..run.end].iter().take(room));
                    total += run.len();
                }
            }
            // Search texts hold no newline, so such a filter matches nothing.
            Some(needle) if needle.contains('\n') => {}
            Some(needle) => {
                let finder = memchr::memmem::Finder::new(needle.as_bytes());
                for run in runs.into_iter().filter(|r| !r.is_empty()) {
                    let from = self.starts[run.start];
                    let to = self.starts.get(run.end).copied().unwrap_or(self.text.len());
                    let mut last = None;
                    for at in finder.find_iter(&self.text.as_bytes()[from..to]) {
                        // The table whose text holds the match (a match never spans the newline after a text).
                        let i = self.starts.partition_point(|&s| s <= from + at) - 1;
                        if last != Some(i) {
                            last = Some(i);
                            if total >= offset && page.len() < limit {
                                page.push(&self.tables[i]);
                            }
                            total += 1;
                        }
                    }
                }
            }
        }
        (total, page)
    }
}

/// Per principal, what it may discover, valid for one policy version and one table list (compared by pointer:
/// the lakehouse hands out the same `Arc` while the list is unchanged).
pub struct DiscoveryCache {
    /// Bounded (least recently used principals leave first).
    entries: moka::sync::Cache<String, DiscoveryEntry>,
}

impl Default for DiscoveryCache {
    fn default() -> DiscoveryCache {
        DiscoveryCache {
            entries: moka::sync::Cache::new(MAX_DISCOVERY_ENTRIES),
        }
    }
}

#[derive(Clone)]
struct DiscoveryEntry {
    principal: Principal,
    purpose: Option<String>,
    /// Versions of the policy, the contracts and the catalogs' answers it was computed under.
    policy_version: (u64, u64, u64),
    names: Arc<Vec<TableName>>,
    discovered: Arc<Discovered>,
}

/// Principals kept.
pub const MAX_DISCOVERY_ENTRIES: u64 = 1024;

impl DiscoveryCache {
    pub fn get(
        &self,
        checked: &Checked<'_>,
        names: &Arc<Vec<TableName>>,
        policy_version: (u64, u64, u64),
    ) -> Option<Arc<Discovered>> {
        let e = self.entries.get(checked.principal_id())?;
        (e.policy_version == policy_version
            && Arc::ptr_eq(&e.names, names)
            && e.principal == *checked.principal()
            && e.purpose.as_deref() == checked.purpose())
        .then(|| e.discovered.clone())
    }

    pub fn put(
        &self,
        checked: &Checked<'_>,
        names: Arc<Vec<TableName>>,
        policy_version: (u64, u64, u64),
        discovered: Arc<Discovered>,
    ) {
        self.entries.insert(
            checked.principal_id().to_string(),
            DiscoveryEntry {
                principal: checked.principal().clone(),
                purpose: checked.purpose().map(str::to_string),
                policy_version,
                names,
                discovered,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TableFacts;

    fn table(namespace: &str, name: &str) -> Discoverable {
        Discoverable {
            name: TableName::parse(&format!("{namespace}.{name}")).unwrap(),
            resource: Resource::Table(TableFacts {
                namespace: namespace.into(),
                name: name.into(),
                owner: "o".into(),
                tags: vec![],
                contains_pii: false,
                classifications: vec![],
                pii_columns: vec![],
                quality: "unchecked".into(),
                quality_breaches: vec![],
            }),
            summary: TableSummary {
                table: format!("{namespace}.{name}"),
                namespace: namespace.into(),
                description: None,
                owner: None,
                tags: vec![],
                row_count: None,
                contains_pii: false,
                can_query: false,
                grant_ids: vec![],
                contract_drift: false,
            },
            can_query: OnceLock::new(),
        }
    }

    /// What `page` must return, by brute force over the same tables.
    fn naive(
        tables: &[(String, String, String)],
        namespace: Option<&str>,
        filter: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<String>) {
        let hits: Vec<String> = tables
            .iter()
            .filter(|(ns, _, _)| namespace.is_none_or(|n| n == ns))
            .filter(|(_, _, text)| {
                filter.is_none_or(|f| {
                    text.to_lowercase()
                        .replace('\n', " ")
                        .contains(&f.to_lowercase())
                })
            })
            .map(|(ns, name, _)| format!("{ns}.{name}"))
            .collect();
        let page = hits.iter().skip(offset).take(limit).cloned().collect();
        (hits.len(), page)
    }

    #[test]
    fn pages_and_searches_agree_with_a_brute_force_scan() {
        // Deterministic pseudo-random catalog: namespaces of varied sizes, texts with repeats, case and newlines.
        let words = [
            "Orders",
            "order",
            "PII",
            "revenue",
            "a",
            "ab",
            "b\nc",
            "ünïcode",
            "x",
        ];
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let mut tables = Vec::new();
        for ns in 0..7 {
            for t in 0..next(40) {
                let text: Vec<&str> = (0..next(5)).map(|_| words[next(words.len())]).collect();
                tables.push((format!("ns{ns}"), format!("t{t:03}"), text.join(" ")));
            }
        }
        let index = Discovered::new(
            tables
                .iter()
                .map(|(ns, name, text)| (table(ns, name), format!("{ns}.{name} {text}")))
                .collect(),
        );
        let texts: Vec<(String, String, String)> = tables
            .iter()
            .map(|(ns, name, text)| (ns.clone(), name.clone(), format!("{ns}.{name} {text}")))
            .collect();
        let filters = [
            None,
            Some("order"),
            Some("ORDERS"),
            Some("pii"),
            Some("b c"),
            Some("b\nc"),
            Some("ÜNÏ"),
            Some("a a"),
            Some("t01"),
            Some("ns3.t0"),
            Some(""),
            Some("nothing"),
        ];
        for namespace in [None, Some("ns0"), Some("ns3"), Some("ns9"), Some("")] {
            for filter in filters {
                for (offset, limit) in [(0, 50), (0, 1), (3, 2), (10, 7), (1000, 5)] {
                    let (total, page) = index.page(namespace, filter, offset, limit);
                    let got: Vec<String> = page.iter().map(|d| d.summary.table.clone()).collect();
                    assert_eq!(
                        (total, got),
                        naive(&texts, namespace, filter, offset, limit),
                        "namespace {namespace:?}, filter {filter:?}, offset {offset}, limit {limit}"
                    );
                }
            }
        }
    }
}
