//! Flat counters for the per-token hot path: u32 cells, so that a DeepSeek-sized matrix
//! (256 x 256) is 256 KiB and stays in a core's L2 cache, spilled into u64 totals before any
//! cell can overflow. Exact for any number of tokens.

/// `blocks` blocks of `width` counters. Each observation (token) may add at most
/// `max_per_observation` to any one cell; a block is spilled into its u64 totals before the
/// observations since its last spill could overflow a u32.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    width: usize,
    hot: Vec<u32>,
    /// u64 totals already spilled; empty until the first spill.
    cold: Vec<u64>,
    /// Observations per block since its last spill.
    pending: Vec<u32>,
    limit: u32,
}

impl Counters {
    pub fn new(blocks: usize, width: usize, max_per_observation: usize) -> Self {
        let per = u32::try_from(max_per_observation.max(1)).unwrap_or(u32::MAX);
        Self {
            width,
            hot: vec![0; blocks * width],
            cold: Vec::new(),
            pending: vec![0; blocks],
            limit: (u32::MAX / per).max(1),
        }
    }

    pub fn blocks(&self) -> usize {
        self.pending.len()
    }

    /// Most observations one [`Counters::observe`] call may announce.
    pub fn max_batch(&self) -> usize {
        self.limit as usize
    }

    /// The counters of `block`, for `n <= max_batch()` observations: spills first if they
    /// could overflow them.
    #[inline]
    pub fn observe(&mut self, block: usize, n: usize) -> &mut [u32] {
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(self.limit);
        if self.pending[block] > self.limit - n {
            self.spill(block);
        }
        self.pending[block] += n;
        &mut self.hot[block * self.width..(block + 1) * self.width]
    }

    #[cold]
    fn spill(&mut self, block: usize) {
        if self.cold.is_empty() {
            self.cold = vec![0; self.hot.len()];
        }
        let range = block * self.width..(block + 1) * self.width;
        for (c, h) in self.cold[range.clone()]
            .iter_mut()
            .zip(&mut self.hot[range])
        {
            *c += u64::from(*h);
            *h = 0;
        }
        self.pending[block] = 0;
    }

    /// Totals of `block`.
    pub fn block(&self, block: usize) -> Vec<u64> {
        let range = block * self.width..(block + 1) * self.width;
        let hot = &self.hot[range.clone()];
        if self.cold.is_empty() {
            hot.iter().map(|&h| u64::from(h)).collect()
        } else {
            hot.iter()
                .zip(&self.cold[range])
                .map(|(&h, &c)| c + u64::from(h))
                .collect()
        }
    }

    /// Adds `other`'s totals (same layout).
    pub fn merge(&mut self, other: &Counters) {
        if self.cold.is_empty() {
            self.cold = vec![0; self.hot.len()];
        }
        for b in 0..other.blocks() {
            let theirs = other.block(b);
            let range = b * self.width..(b + 1) * self.width;
            for (c, t) in self.cold[range].iter_mut().zip(theirs) {
                *c += t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_before_overflow_and_stays_exact() {
        // At most 2^31 per observation: a spill after every other observation.
        let mut c = Counters::new(2, 3, 1 << 31);
        for _ in 0..5 {
            let b = c.observe(1, 1);
            b[0] += 1 << 31;
            b[2] += 1;
        }
        assert_eq!(c.block(1), vec![5 << 31, 0, 5]);
        assert_eq!(c.block(0), vec![0, 0, 0]);
        let mut d = Counters::new(2, 3, 8);
        d.observe(1, 1)[1] += 7;
        d.merge(&c);
        assert_eq!(d.block(1), vec![5 << 31, 7, 5]);
    }
}

/// Scratch space that groups a batch of tokens by expert (a counting sort), so that the
/// updates of one matrix row happen together while that row (1 KiB for 256 experts) is in L1,
/// instead of scattering every token's k x k updates over the whole matrix.
#[derive(Debug, Clone, Default)]
pub struct RowBatch {
    starts: Vec<u32>,
    entries: Vec<u32>,
    fill: Vec<u32>,
}

impl RowBatch {
    /// Groups tokens `0..n` under each valid expert of `rows_of(t)` (a token with an expert
    /// twice is listed twice, as its updates would be).
    pub fn group<'a>(&mut self, experts: usize, n: usize, rows_of: impl Fn(usize) -> &'a [u16]) {
        self.starts.clear();
        self.starts.resize(experts + 1, 0);
        for t in 0..n {
            for &i in rows_of(t) {
                if i != crate::MISSING_EXPERT {
                    self.starts[i as usize + 1] += 1;
                }
            }
        }
        for i in 0..experts {
            self.starts[i + 1] += self.starts[i];
        }
        self.entries.clear();
        self.entries.resize(self.starts[experts] as usize, 0);
        self.fill.clear();
        self.fill.extend_from_slice(&self.starts[..experts]);
        for t in 0..n {
            for &i in rows_of(t) {
                if i != crate::MISSING_EXPERT {
                    let f = &mut self.fill[i as usize];
                    self.entries[*f as usize] = t as u32;
                    *f += 1;
                }
            }
        }
    }

    /// Tokens grouped under expert `i`, ascending.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.entries[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::MISSING_EXPERT;

    #[test]
    fn groups_tokens_by_expert() {
        let sels: [&[u16]; 3] = [&[2, 0], &[0, MISSING_EXPERT], &[2, 2]];
        let mut b = RowBatch::default();
        b.group(3, 3, |t| sels[t]);
        assert_eq!(b.row(0), &[0, 1]);
        assert_eq!(b.row(1), &[] as &[u32]);
        assert_eq!(b.row(2), &[0, 2, 2]);
    }
}
