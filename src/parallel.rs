//! Work over many independent items (contracts to parse, tables to decide) on all cores, in order.

/// `f` over `items`, in contiguous chunks of at least `min_chunk` items, one thread per core (scoped: borrows
/// are fine), results in the items' order; `None` results are dropped. A chunk whose thread panics yields nothing
/// and is logged naming `what` — callers pick `f` so that missing results fail closed (a table not listed, a
/// contract not used).
pub fn filter_map_chunks<'a, T: Sync, R: Send>(
    items: &'a [T],
    min_chunk: usize,
    what: &str,
    f: impl Fn(&'a T) -> Option<R> + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().div_ceil(min_chunk.max(1)).max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().filter_map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join().unwrap_or_else(|_| {
                    tracing::error!("a thread {what} panicked; its share is left out");
                    Vec::new()
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_items_order() {
        let items: Vec<u32> = (0..10_000).collect();
        let odd = super::filter_map_chunks(&items, 16, "testing", |i| (i % 2 == 1).then_some(*i));
        assert_eq!(
            odd,
            items
                .iter()
                .copied()
                .filter(|i| i % 2 == 1)
                .collect::<Vec<_>>()
        );
        assert!(super::filter_map_chunks(&[] as &[u32], 16, "testing", |i| Some(*i)).is_empty());
    }

    #[test]
    fn a_panicking_chunk_is_left_out() {
        let items: Vec<u32> = (0..4096).collect();
        let got = super::filter_map_chunks(&items, 1, "testing", |i| {
            assert!(*i < 4000, "boom");
            Some(*i)
        });
        assert!(got.len() < items.len());
        assert!(got.iter().all(|i| *i < 4000));
    }
}
