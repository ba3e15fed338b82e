//! Host-side work spread over the cores: reading scattered entries of memory-mapped checkpoints
//! is bound by page faults, which run in parallel across threads.

use fusion_plugin_api::Result;

/// `f` of every item, in order, the items split into contiguous runs over as many threads as
/// there are cores. The first error (in item order) is returned.
pub(crate) fn map_parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = items.len().div_ceil(threads.max(1)).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(per)
            .map(|run| scope.spawn(move || run.iter().map(f).collect::<Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for w in workers {
            out.extend(w.join().expect("a host worker thread panicked")?);
        }
        Ok(out)
    })
}
