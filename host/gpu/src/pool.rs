//! A pool of storage buffers, reused by size class after [`fusion_plugin_api::Compute::release`].
//!
//! Merging streams the same tensor shapes model after model, so exact reuse is common; size
//! classes (four per power of two, so at most 25% slack) let near sizes share buffers too.

use std::collections::{HashMap, VecDeque};

/// Smallest buffer handed out: binding a zero-sized buffer is invalid, and tiny buffers are not
/// worth tracking separately.
const MIN_CLASS: u64 = 256;

/// The buffer size used for a request of `bytes` (already padded to 4), capped at `max` (the
/// device's max buffer size) so a legal request never fails because of rounding.
pub(crate) fn size_class(bytes: u64, max: u64) -> u64 {
    let class = if bytes <= MIN_CLASS {
        MIN_CLASS
    } else {
        // Four steps per octave: 1, 1.25, 1.5, 1.75 times the power of two below.
        let p = 1u64 << (63 - bytes.leading_zeros());
        let step = (p / 4).max(4);
        bytes.div_ceil(step) * step
    };
    class.min(max).max(bytes)
}

/// Counters for the debug log and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests served by a pooled buffer.
    pub hits: u64,
    /// Requests that allocated a new buffer.
    pub misses: u64,
    /// Buffers currently idle in the pool.
    pub idle_buffers: u64,
    /// Bytes currently idle in the pool.
    pub idle_bytes: u64,
    /// Buffers dropped because the pool was full.
    pub evicted: u64,
}

pub(crate) struct BufferPool {
    /// Idle buffers by size class, oldest release first, each with the batch of launches it
    /// was released in (work recorded until then may still use it).
    free: HashMap<u64, VecDeque<(wgpu::Buffer, u64)>>,
    capacity: u64,
    /// Buffers the host maps directly (see `Runtime`'s unified memory); else storage buffers
    /// reached through copies.
    mappable: bool,
    stats: PoolStats,
}

impl BufferPool {
    pub(crate) fn new(capacity: u64, mappable: bool) -> Self {
        BufferPool {
            free: HashMap::new(),
            capacity,
            mappable,
            stats: PoolStats::default(),
        }
    }

    /// A buffer of exactly `class` bytes: a pooled one (`true`), or a new one, mapped for
    /// writing when `mapped` and the pool's buffers are mappable. Pooled
    /// buffers go oldest first. With `done`, the batches before it have finished on the device:
    /// a mapped request then takes a new buffer rather than one still in use, so that the host
    /// fills it while the device works.
    pub(crate) fn take(
        &mut self,
        device: &wgpu::Device,
        class: u64,
        mapped: bool,
        done: Option<u64>,
    ) -> (wgpu::Buffer, bool) {
        let queue = self.free.entry(class).or_default();
        let busy = match (queue.front(), done) {
            (Some(&(_, batch)), Some(done)) => mapped && self.mappable && batch >= done,
            _ => false,
        };
        if !busy {
            if let Some((buffer, _)) = queue.pop_front() {
                self.stats.hits += 1;
                self.stats.idle_buffers -= 1;
                self.stats.idle_bytes -= class;
                return (buffer, true);
            }
        }
        self.stats.misses += 1;
        tracing::trace!(
            class,
            misses = self.stats.misses,
            "allocating a new GPU buffer"
        );
        let mut usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        if self.mappable {
            usage |= wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE;
        }
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fusion tensor"),
            size: class,
            usage,
            mapped_at_creation: mapped && self.mappable,
        });
        (buffer, false)
    }

    /// Return a buffer. Beyond the capacity it is dropped instead (wgpu frees it once queued work
    /// that uses it has finished).
    pub(crate) fn give(&mut self, buffer: wgpu::Buffer, batch: u64) {
        let class = buffer.size();
        if self.stats.idle_bytes + class > self.capacity {
            self.stats.evicted += 1;
            tracing::debug!(class, stats = ?self.stats, "buffer pool full; freeing a released buffer");
            return;
        }
        self.stats.idle_buffers += 1;
        self.stats.idle_bytes += class;
        self.free
            .entry(class)
            .or_default()
            .push_back((buffer, batch));
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_bound_slack_and_respect_max() {
        assert_eq!(size_class(4, u64::MAX), MIN_CLASS);
        assert_eq!(size_class(256, u64::MAX), 256);
        assert_eq!(size_class(257, u64::MAX), 320);
        assert_eq!(size_class(1024, u64::MAX), 1024);
        assert_eq!(size_class(1025, u64::MAX), 1280);
        for bytes in (4..100_000u64).step_by(4) {
            let c = size_class(bytes, u64::MAX);
            assert!(c >= bytes && c % 4 == 0);
            assert!(c <= MIN_CLASS.max(bytes + bytes / 4), "{bytes} -> {c}");
        }
        assert_eq!(size_class(1000, 1000), 1000);
        assert_eq!(size_class(100, 64), 100);
    }
}
