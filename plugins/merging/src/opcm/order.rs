//! The order in which the continual methods take the models: the pool's order, or Python's
//! `random.shuffle` of it after Lightning's `seed_everything(seed)`, as FusionBench's OPCM and
//! its continual baselines do. Python's generator (MT19937 seeded by `init_by_array`, and its
//! `_randbelow` by rejection on `getrandbits`) is reproduced bit for bit, so a seeded shuffle
//! takes the models in FusionBench's order.

use fusion_plugin_api::{Context, Error, Result};

/// Python's `random.Random`, the parts `shuffle` uses.
pub(crate) struct PyRandom {
    mt: [u32; 624],
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer seed.
    pub(crate) fn new(seed: u64) -> Self {
        let mut key = Vec::new();
        let mut n = seed;
        while n > 0 {
            key.push(n as u32);
            n >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut r = PyRandom {
            mt: [0; 624],
            index: 624,
        };
        r.init_by_array(&key);
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..624 {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = 624;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                self.mt[0] = self.mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                self.mt[0] = self.mt[623];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn next_u32(&mut self) -> u32 {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.mt[k] & UPPER) | (self.mt[(k + 1) % 624] & LOWER);
                let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `_randbelow(n)` for 0 < n < 2³²: `getrandbits(n.bit_length())` until below `n`.
    fn below(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.next_u32() >> (32 - k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(x)` (Python 3.11).
    pub(crate) fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.below(i as u32 + 1) as usize;
            x.swap(i, j);
        }
    }
}

/// `shuffle_order` and `seed`, FusionBench's parameters of every continual method.
#[derive(Clone, Debug)]
pub(crate) struct Order {
    pub shuffle: bool,
    pub seed: Option<u64>,
    /// Without a `seed`, draw a fresh one from the clock even when the program has a seed
    /// (FusionBench's `ContinualDOPForCLIP` calls `seed_everything_by_time` then).
    pub by_time: bool,
}

impl Order {
    pub(crate) fn read(config: &fusion_plugin_api::Config, algorithm: &str) -> Result<Self> {
        let shuffle = config.get_or("shuffle_order", true)?;
        let seed: Option<u64> = config.get("seed")?;
        if let Some(s) = seed {
            // Lightning's seed_everything accepts the range numpy does.
            if s > u64::from(u32::MAX) {
                return Err(Error::config(format!(
                    "{algorithm}: `seed` {s} is out of bounds; seeds run from 0 to {} (numpy's \
                     range, which Lightning's seed_everything checks)",
                    u32::MAX
                )));
            }
        }
        Ok(Order {
            shuffle,
            seed,
            by_time: false,
        })
    }

    /// The pool's model names in the order the method takes them. Without a `seed` of its own
    /// the method uses the program's (FusionBench seeds Python's generator once for the whole
    /// run); with neither, a fresh one, logged.
    pub(crate) fn apply(
        &self,
        mut names: Vec<String>,
        ctx: &Context,
        algorithm: &str,
    ) -> Vec<String> {
        if self.shuffle && names.len() > 1 {
            let seed = match (self.seed, self.by_time) {
                (None, true) => {
                    let s = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0);
                    tracing::warn!(
                        seed = s,
                        "{algorithm}: no `seed` set: shuffling with the clock's seed {s} (the \
                         program's seed does not order this method, as in FusionBench)"
                    );
                    s
                }
                _ => crate::params::seed(self.seed, ctx, algorithm),
            } & u64::from(u32::MAX);
            PyRandom::new(seed).shuffle(&mut names);
        }
        tracing::info!(order = ?names, "{algorithm}: models in the order merged");
        names
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    fn shuffled(seed: u64) -> Vec<&'static str> {
        let mut x = vec!["task_a", "task_b", "task_c", "task_d"];
        PyRandom::new(seed).shuffle(&mut x);
        x
    }

    /// `random.seed(s); random.shuffle(x)` in CPython 3.11.
    #[test]
    fn python_shuffle() {
        assert_eq!(shuffled(42), ["task_c", "task_b", "task_d", "task_a"]);
        assert_eq!(shuffled(7), ["task_d", "task_b", "task_a", "task_c"]);
        assert_eq!(shuffled(3), ["task_d", "task_a", "task_c", "task_b"]);
        assert_eq!(shuffled(11), ["task_a", "task_b", "task_c", "task_d"]);
        assert_eq!(shuffled(2026), ["task_c", "task_d", "task_b", "task_a"]);
    }

    /// `random.seed(0)` and a seed above 2³² (two key words); `random.getrandbits(32)`.
    #[test]
    fn python_getrandbits() {
        assert_eq!(PyRandom::new(0).next_u32(), 3_626_764_237);
        assert_eq!(PyRandom::new(42).next_u32(), 2_746_317_213);
        assert_eq!(PyRandom::new(1 << 33 | 5).next_u32(), 3_185_278_367);
        let mut x: Vec<u32> = (0..10).collect();
        PyRandom::new(123_456_789).shuffle(&mut x);
        assert_eq!(x, [0, 1, 9, 4, 3, 5, 2, 6, 8, 7]);
    }
}
