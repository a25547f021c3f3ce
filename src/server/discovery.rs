//! What each principal may discover, indexed for `list_tables` and decided lazily: the catalog's sorted table list
//! is cut into runs ("chunks"); a run's policy decisions are made the first time a page needs it (and by one
//! background task that decides the rest in order), so the first page of a catalog of 100,000 tables waits for one
//! run's decisions, not for 100,000. Within a decided run a page is a slice, and a text search scans one contiguous
//! buffer (memchr's SIMD substring search) instead of following a pointer per table.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;

use crate::catalog::TableName;
use crate::gate::{Checked, ToolError};
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

/// Decides which tables of a run of the listed names (`names[range]`) the principal may discover: each with its
/// position in `names` and its search text (name, contract purpose, tags and title), in the names' order.
pub type Decide = Arc<
    dyn Fn(
            Arc<Vec<TableName>>,
            Range<usize>,
        ) -> BoxFuture<'static, Result<Vec<(usize, Discoverable, String)>, ToolError>>
        + Send
        + Sync,
>;

/// Listed tables per run decided together: large enough that deciding a run is worth a task, small enough that a
/// first page waits for little more than it shows.
pub const CHUNK: usize = 512;

/// The tables a principal may discover, sorted by name, decided run by run.
pub struct Discovered {
    /// Every listed table, sorted (namespace first), discoverable or not.
    names: Arc<Vec<TableName>>,
    /// Runs of `names` sharing a namespace, with the dot-joined namespace.
    namespaces: Vec<(String, Range<usize>)>,
    /// `names` in runs of `chunk`; each decided once.
    chunks: Vec<tokio::sync::OnceCell<Chunk>>,
    chunk: usize,
    decide: Decide,
}

/// The discoverable tables of one run, with their search text laid out for scanning.
struct Chunk {
    /// The positions in `names` the run was decided for.
    run: Range<usize>,
    /// Position of each table in `names`, ascending.
    positions: Vec<usize>,
    tables: Vec<Discoverable>,
    /// Each table's search text, lowercased, newline-terminated, back to back.
    text: String,
    /// Where each table's text starts in `text`.
    starts: Vec<usize>,
    /// Which tables hold each three-byte sequence of their text, built by the first search of the run.
    grams: OnceLock<Grams>,
}

/// For each three-byte sequence found in a run's search texts, the tables (indexes in the run, ascending) whose
/// text holds it. A text holding a needle holds each of the needle's sequences, so a search of three bytes or more
/// need only confirm the tables listed under the needle's rarest sequence, instead of scanning every text.
struct Grams {
    /// Sequences present, ascending.
    keys: Vec<u32>,
    /// `ids[offsets[k]..offsets[k + 1]]` hold `keys[k]`.
    offsets: Vec<u32>,
    ids: Vec<u16>,
}

fn gram(bytes: &[u8]) -> u32 {
    u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2])
}

impl Grams {
    fn new(chunk: &Chunk) -> Grams {
        let mut pairs: Vec<(u32, u16)> = Vec::new();
        // A run holds at most u16::MAX tables (see `Discovered::with_chunk`).
        for (id, i) in (0..=u16::MAX).zip(0..chunk.tables.len()) {
            pairs.extend(
                chunk
                    .text_of(i)
                    .as_bytes()
                    .windows(3)
                    .map(|w| (gram(w), id)),
            );
        }
        pairs.sort_unstable();
        pairs.dedup();
        let mut grams = Grams {
            keys: Vec::new(),
            offsets: Vec::new(),
            ids: Vec::with_capacity(pairs.len()),
        };
        for (key, id) in pairs {
            if grams.keys.last() != Some(&key) {
                grams.keys.push(key);
                grams.offsets.push(grams.ids.len() as u32);
            }
            grams.ids.push(id);
        }
        grams.offsets.push(grams.ids.len() as u32);
        grams
    }

    /// The tables whose text holds `key`.
    fn holding(&self, key: u32) -> &[u16] {
        match self.keys.binary_search(&key) {
            Ok(k) => &self.ids[self.offsets[k] as usize..self.offsets[k + 1] as usize],
            Err(_) => &[],
        }
    }
}

impl Chunk {
    fn new(run: Range<usize>, decided: Vec<(usize, Discoverable, String)>) -> Chunk {
        let mut chunk = Chunk {
            run,
            positions: Vec::with_capacity(decided.len()),
            tables: Vec::with_capacity(decided.len()),
            text: String::new(),
            starts: Vec::with_capacity(decided.len()),
            grams: OnceLock::new(),
        };
        for (position, table, search) in decided {
            chunk.positions.push(position);
            chunk.starts.push(chunk.text.len());
            chunk
                .text
                .push_str(&search.to_lowercase().replace('\n', " "));
            chunk.text.push('\n');
            chunk.tables.push(table);
        }
        chunk
    }

    /// The indexes of its tables whose positions fall in `range`.
    fn within(&self, range: &Range<usize>) -> Range<usize> {
        // A page over the whole catalog or a namespace covers most runs whole: no search (two binary searches per
        // run were a tenth of a first page's time on 100,000 tables, each step a cache miss).
        if range.start <= self.run.start && self.run.end <= range.end {
            return 0..self.positions.len();
        }
        let lo = self.positions.partition_point(|&p| p < range.start);
        let hi = self.positions.partition_point(|&p| p < range.end);
        lo..hi.max(lo)
    }

    /// Table `i`'s search text, without its newline.
    fn text_of(&self, i: usize) -> &str {
        let end = self.starts.get(i + 1).copied().unwrap_or(self.text.len());
        &self.text[self.starts[i]..end - 1]
    }

    /// Its tables in `range` whose text the finder finds its needle in, in order.
    fn matches<'c>(
        &'c self,
        range: &Range<usize>,
        finder: &memchr::memmem::Finder<'_>,
        mut hit: impl FnMut(&'c Discoverable),
    ) {
        let within = self.within(range);
        if within.is_empty() {
            return;
        }
        let needle = finder.needle();
        if needle.len() >= 3 {
            let grams = self.grams.get_or_init(|| Grams::new(self));
            let rarest = needle
                .windows(3)
                .map(|w| grams.holding(gram(w)))
                .min_by_key(|ids| ids.len())
                .unwrap_or_default();
            for &id in rarest {
                let i = usize::from(id);
                if within.contains(&i) && finder.find(self.text_of(i).as_bytes()).is_some() {
                    hit(&self.tables[i]);
                }
            }
            return;
        }
        let from = self.starts[within.start];
        let to = self
            .starts
            .get(within.end)
            .copied()
            .unwrap_or(self.text.len());
        let mut last = None;
        for at in finder.find_iter(&self.text.as_bytes()[from..to]) {
            // The table whose text holds the match (a match never spans the newline after a text).
            let i = self.starts.partition_point(|&s| s <= from + at) - 1;
            if last != Some(i) {
                last = Some(i);
                hit(&self.tables[i]);
            }
        }
    }
}

impl Discovered {
    /// An index over `names` (sorted), nothing decided yet: `decide` is called for each run of [`CHUNK`] names
    /// the first time it is needed.
    pub fn new(names: Arc<Vec<TableName>>, decide: Decide) -> Discovered {
        Discovered::with_chunk(names, decide, CHUNK)
    }

    fn with_chunk(names: Arc<Vec<TableName>>, decide: Decide, chunk: usize) -> Discovered {
        // A namespace's text is made where the levels change, not for every table.
        let mut namespaces: Vec<(String, Range<usize>)> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if let Some((_, run)) = namespaces.last_mut()
                && names[run.end - 1].namespace == name.namespace
            {
                run.end = i + 1;
                continue;
            }
            let ns = name.namespace_str();
            match namespaces.last_mut() {
                Some((last, run)) if *last == ns => run.end = i + 1,
                _ => namespaces.push((ns, i..i + 1)),
            }
        }
        // Tables are numbered within a run as `u16` (see `Grams`).
        let chunk = chunk.clamp(1, usize::from(u16::MAX));
        Discovered {
            chunks: (0..names.len().div_ceil(chunk))
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            names,
            namespaces,
            chunk,
            decide,
        }
    }

    /// Run `c`, deciding it now unless it was.
    async fn chunk(&self, c: usize) -> Result<&Chunk, ToolError> {
        self.chunks[c]
            .get_or_try_init(|| async {
                let range = c * self.chunk..((c + 1) * self.chunk).min(self.names.len());
                Ok(Chunk::new(
                    range.clone(),
                    (self.decide)(self.names.clone(), range).await?,
                ))
            })
            .await
    }

    /// Whether every run is decided.
    pub fn complete(&self) -> bool {
        self.chunks.iter().all(|c| c.initialized())
    }

    /// Decides the runs not decided yet, in order, `parallel` at a time, while the index is still in use (held
    /// elsewhere than by `index`); stops at the first failure (a later page decides that run again).
    pub async fn decide_rest(index: std::sync::Weak<Discovered>, parallel: usize) {
        use futures::StreamExt as _;
        let Some(runs) = index.upgrade().map(|d| d.chunks.len()) else {
            return;
        };
        let mut decided = futures::stream::iter(0..runs)
            .map(|c| {
                let index = index.clone();
                async move {
                    let Some(d) = index.upgrade() else {
                        return Ok(false);
                    };
                    d.chunk(c).await.map(|_| true)
                }
            })
            .buffered(parallel.max(1));
        while let Some(result) = decided.next().await {
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!("deciding discovery in the background stopped: {e}");
                    return;
                }
            }
        }
    }

    /// Every table the principal may discover, deciding whatever was not decided yet.
    pub async fn all(&self) -> Result<Vec<&Discoverable>, ToolError> {
        let mut out = Vec::new();
        for c in 0..self.chunks.len() {
            out.extend(self.chunk(c).await?.tables.iter());
        }
        Ok(out)
    }

    /// The namespaces holding tables the principal may discover, sorted.
    pub async fn namespaces(&self) -> Result<Vec<&str>, ToolError> {
        let mut out: Vec<&str> = Vec::new();
        for (ns, run) in &self.namespaces {
            // A page of one is empty only once every run of the namespace was decided and held none.
            let (_, page) = self.page_of(run.clone(), None, 0, 1).await?;
            if !page.is_empty() {
                out.push(ns);
            }
        }
        Ok(out)
    }

    /// The tables in `namespace` (when given) whose search text contains `filter` (case-insensitive, when
    /// given): the `limit` of them after the first `offset`, and how many there are — `None` when that is not
    /// known yet: runs are decided only as far as this page and the next needs them (a background task decides
    /// the rest), so the first pages of a large catalog answer before every table is decided.
    pub async fn page(
        &self,
        namespace: Option<&str>,
        filter: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(Option<usize>, Vec<&Discoverable>), ToolError> {
        let range = match namespace {
            None => 0..self.names.len(),
            Some(ns) => self
                .namespaces
                .iter()
                .find(|(name, _)| name == ns)
                .map_or(0..0, |(_, run)| run.clone()),
        };
        self.page_of(range, filter, offset, limit).await
    }

    async fn page_of(
        &self,
        range: Range<usize>,
        filter: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(Option<usize>, Vec<&Discoverable>), ToolError> {
        let needle = filter.filter(|f| !f.is_empty()).map(str::to_lowercase);
        // Search texts hold no newline, so such a filter matches nothing.
        if needle.as_deref().is_some_and(|n| n.contains('\n')) || range.is_empty() {
            return Ok((Some(0), Vec::new()));
        }
        let finder = needle
            .as_deref()
            .map(|n| memchr::memmem::Finder::new(n.as_bytes()));
        let mut total = 0;
        let mut page = Vec::with_capacity(limit.min(range.len()));
        let runs = range.start / self.chunk..range.end.div_ceil(self.chunk);
        for c in runs {
            // Enough for this page and to know another follows: runs not decided yet are left to the background.
            if total > offset.saturating_add(limit) && !self.chunks[c].initialized() {
                return Ok((None, page));
            }
            let chunk = self.chunk(c).await?;
            let Some(finder) = &finder else {
                // Counted, not walked.
                let within = chunk.within(&range);
                let skip = offset.saturating_sub(total).min(within.len());
                let room = limit - page.len();
                page.extend(
                    chunk.tables[within.start + skip..within.end]
                        .iter()
                        .take(room),
                );
                total += within.len();
                continue;
            };
            chunk.matches(&range, finder, |d| {
                if total >= offset && page.len() < limit {
                    page.push(d);
                }
                total += 1;
            });
        }
        Ok((Some(total), page))
    }
}

/// Per principal, what it may discover, valid for one policy version and one table list (compared by pointer:
/// the lakehouse hands out the same `Arc` while the list is unchanged).
pub struct DiscoveryCache {
    /// Bounded by the indexes' estimated size (least recently used principals leave first).
    entries: moka::sync::Cache<String, DiscoveryEntry>,
}

/// What an index is counted at per listed table, whether or not its run was decided yet: a decided entry with its
/// listing fields and search text, and its share of the sequence index once searched, take ~1 KiB on the
/// 100,000-table bench catalog.
const BYTES_PER_TABLE: u64 = 1024;

/// What every index is counted at besides its tables.
const BYTES_PER_INDEX: u64 = 4096;

/// The discovery indexes kept together, by their estimated size: a few principals' indexes of a 100,000-table
/// catalog, or every principal's of a small one. An index that left is built again by the next call, which
/// decides only the runs its page needs.
pub const DISCOVERY_BYTES: u64 = 1 << 30;

impl Default for DiscoveryCache {
    fn default() -> DiscoveryCache {
        DiscoveryCache::with_budget(DISCOVERY_BYTES)
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

/// Principals kept by the small per-principal caches beside discovery (table ownership, grant hints).
pub const MAX_DISCOVERY_ENTRIES: u64 = 1024;

impl DiscoveryCache {
    /// A cache keeping indexes of at most `bytes` together (estimated, see [`BYTES_PER_TABLE`]).
    pub fn with_budget(bytes: u64) -> DiscoveryCache {
        DiscoveryCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_, e: &DiscoveryEntry| {
                    let bytes = (e.names.len() as u64).saturating_mul(BYTES_PER_TABLE);
                    u32::try_from(bytes.saturating_add(BYTES_PER_INDEX)).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

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

    /// A catalog of `tables` (namespace, name, search text, discoverable), sorted; the index over it decides by
    /// the fourth field, counting the runs it decides.
    fn index(
        tables: &[(String, String, String, bool)],
        chunk: usize,
    ) -> (Discovered, Arc<std::sync::atomic::AtomicUsize>) {
        let names: Arc<Vec<TableName>> = Arc::new(
            tables
                .iter()
                .map(|(ns, name, _, _)| TableName::parse(&format!("{ns}.{name}")).unwrap())
                .collect(),
        );
        let decided = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rows, count) = (Arc::new(tables.to_vec()), decided.clone());
        let decide: Decide = Arc::new(move |_names, range: Range<usize>| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let rows = rows.clone();
            Box::pin(async move {
                Ok(range
                    .filter(|&i| rows[i].3)
                    .map(|i| {
                        let (ns, name, text, _) = &rows[i];
                        (i, table(ns, name), format!("{ns}.{name} {text}"))
                    })
                    .collect())
            })
        });
        (Discovered::with_chunk(names, decide, chunk), decided)
    }

    #[tokio::test]
    async fn pages_and_searches_agree_with_a_brute_force_scan_however_far_decided() {
        // Deterministic pseudo-random catalog: namespaces of varied sizes, texts with repeats, case and newlines,
        // some tables hidden from the principal.
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
                tables.push((
                    format!("ns{ns}"),
                    format!("t{t:03}"),
                    text.join(" "),
                    next(4) != 0,
                ));
            }
        }
        let texts: Vec<(String, String, String)> = tables
            .iter()
            .filter(|t| t.3)
            .map(|(ns, name, text, _)| (ns.clone(), name.clone(), format!("{ns}.{name} {text}")))
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
            Some("t0"),
            Some("ab"),
            Some("rev"),
            Some("ns3.t0"),
            Some("orders order"),
            Some("ïc"),
            Some(""),
            Some("nothing"),
        ];
        for chunk in [1, 3, 16, 1000] {
            // A fresh index per question, so each is asked of a partly decided index too; then one index asked
            // everything in turn.
            let (shared, _) = index(&tables, chunk);
            for namespace in [None, Some("ns0"), Some("ns3"), Some("ns9"), Some("")] {
                for filter in filters {
                    for (offset, limit) in [(0, 50), (0, 1), (3, 2), (10, 7), (1000, 5)] {
                        let (want_total, want) = naive(&texts, namespace, filter, offset, limit);
                        let (fresh, _) = index(&tables, chunk);
                        for index in [&fresh, &shared] {
                            let (total, page) =
                                index.page(namespace, filter, offset, limit).await.unwrap();
                            let got: Vec<String> =
                                page.iter().map(|d| d.summary.table.clone()).collect();
                            let at = format!(
                                "chunk {chunk}, namespace {namespace:?}, filter {filter:?}, offset {offset}, limit {limit}"
                            );
                            assert_eq!(got, want, "{at}");
                            match total {
                                Some(total) => assert_eq!(total, want_total, "{at}"),
                                // Unknown only when more follow this page.
                                None => assert!(want_total > offset + limit, "{at}"),
                            }
                        }
                    }
                }
            }
            assert!(
                shared.complete(),
                "asking for every table decided every run"
            );
        }
    }

    #[tokio::test]
    async fn a_first_page_decides_only_the_runs_it_needs_and_the_rest_follows_in_the_background() {
        let tables: Vec<(String, String, String, bool)> = (0..1000)
            .map(|i| {
                (
                    format!("ns{:02}", i / 100),
                    format!("t{i:04}"),
                    String::new(),
                    i % 2 == 0,
                )
            })
            .collect();
        let (index, decided) = index(&tables, 10);
        let (total, page) = index.page(None, None, 0, 3).await.unwrap();
        assert_eq!(total, None, "nothing past the first run is known");
        let names: Vec<&str> = page.iter().map(|d| d.summary.table.as_str()).collect();
        assert_eq!(names, ["ns00.t0000", "ns00.t0002", "ns00.t0004"]);
        assert_eq!(decided.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(!index.complete());
        // A page needing a namespace's every run decides only those, and knows the namespace's total.
        let (total, page) = index.page(Some("ns05"), None, 0, 50).await.unwrap();
        assert_eq!((total, page.len()), (Some(50), 50));
        assert_eq!(page[0].summary.table, "ns05.t0500");
        assert!(decided.load(std::sync::atomic::Ordering::Relaxed) <= 12);
        let index = Arc::new(index);
        Discovered::decide_rest(Arc::downgrade(&index), 2).await;
        assert!(index.complete());
        assert_eq!(
            decided.load(std::sync::atomic::Ordering::Relaxed),
            100,
            "each run decided once"
        );
        let (total, _) = index.page(None, None, 0, 3).await.unwrap();
        assert_eq!(total, Some(500));
        assert_eq!(index.all().await.unwrap().len(), 500);
        let namespaces = index.namespaces().await.unwrap();
        assert_eq!(namespaces.len(), 10);
    }

    #[test]
    fn indexes_are_kept_within_a_byte_budget_by_their_tables() {
        let entry = |tables: usize| {
            let names: Arc<Vec<TableName>> = Arc::new(
                (0..tables)
                    .map(|i| TableName::parse(&format!("ns.t{i}")).unwrap())
                    .collect(),
            );
            let decide: Decide = Arc::new(|_, _| Box::pin(async { Ok(Vec::new()) }));
            DiscoveryEntry {
                principal: Principal::new("p", vec![]),
                purpose: None,
                policy_version: (1, 1, 1),
                names: names.clone(),
                discovered: Arc::new(Discovered::new(names, decide)),
            }
        };
        // Room for two indexes of 1,000 tables, or for hundreds of a few tables each.
        let cache = DiscoveryCache::with_budget(2 * (1000 * BYTES_PER_TABLE + BYTES_PER_INDEX));
        for p in 0..3 {
            cache.entries.insert(format!("large{p}"), entry(1000));
        }
        cache.entries.run_pending_tasks();
        assert_eq!(cache.entries.entry_count(), 2);
        let cache = DiscoveryCache::with_budget(2 * (1000 * BYTES_PER_TABLE + BYTES_PER_INDEX));
        for p in 0..250 {
            cache.entries.insert(format!("small{p}"), entry(3));
        }
        cache.entries.run_pending_tasks();
        assert_eq!(cache.entries.entry_count(), 250);
    }

    #[tokio::test]
    async fn a_run_that_fails_to_decide_fails_the_page_and_is_decided_again_later() {
        let names = Arc::new(vec![TableName::parse("a.t").unwrap()]);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let decide: Decide = Arc::new(move |_, _| {
            let first = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
            Box::pin(async move {
                if first {
                    Err(ToolError::Internal("catalog down".into()))
                } else {
                    Ok(vec![(0, table("a", "t"), "a.t".to_string())])
                }
            })
        });
        let index = Discovered::new(names, decide);
        assert!(index.page(None, None, 0, 10).await.is_err());
        let (total, page) = index.page(None, None, 0, 10).await.unwrap();
        assert_eq!((total, page.len()), (Some(1), 1));
    }
}
