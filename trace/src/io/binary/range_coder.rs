//! A binary adaptive range coder (the LZMA construction: 32-bit range, carry propagation
//! through a cached byte) with probabilities that adapt fast while a context is young and
//! settle as it ages. Blocks of the binary format are short (one request), so a context must
//! be useful after a handful of observations; a fixed slow rate would waste most of a block
//! learning.

const PROB_BITS: u32 = 12;
const PROB_ONE: u16 = 1 << PROB_BITS;
const TOP: u32 = 1 << 24;
/// Adaptation shift by the number of observations so far: 1/8 at first, 1/32 from the 17th,
/// 1/64 from the 33rd: fast while a context is young, then close to a frequency count.
const RATE: [u8; 64] = {
    let mut t = [6u8; 64];
    let mut i = 0;
    while i < 32 {
        t[i] = if i < 6 {
            3
        } else if i < 16 {
            4
        } else {
            5
        };
        i += 1;
    }
    t
};

/// The adaptive probability that the next bit in one context is 0.
#[derive(Debug, Clone, Copy)]
pub struct Bit {
    p0: u16,
    seen: u8,
}

impl Default for Bit {
    fn default() -> Self {
        Self {
            p0: PROB_ONE / 2,
            seen: 0,
        }
    }
}

impl Bit {
    #[inline]
    fn update(&mut self, bit: bool) {
        let shift = RATE[self.seen as usize];
        // Both arms computed, one selected: the decoder's bits are unpredictable, so a
        // branch here would mispredict about as often as not.
        let down = self.p0 - (self.p0 >> shift);
        let up = self.p0 + ((PROB_ONE - self.p0) >> shift);
        self.p0 = if bit { down } else { up };
        // Shifts of at least 2 keep p0 within 1..PROB_ONE-1, so no symbol ever gets zero
        // range.
        if (self.seen as usize) < RATE.len() - 1 {
            self.seen += 1;
        }
    }
}

/// Encodes bits into a byte vector.
pub struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    pending: u64,
    out: Vec<u8>,
}

impl Encoder {
    pub fn new(out: Vec<u8>) -> Self {
        Self {
            low: 0,
            range: u32::MAX,
            cache: 0,
            pending: 1,
            out,
        }
    }

    #[inline]
    fn shift_low(&mut self) {
        if (self.low as u32) < 0xff00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut b = self.cache;
            while self.pending > 0 {
                self.out.push(b.wrapping_add(carry));
                b = 0xff;
                self.pending -= 1;
            }
            self.cache = ((self.low >> 24) & 0xff) as u8;
        }
        self.pending += 1;
        self.low = (self.low & 0x00ff_ffff) << 8;
    }

    #[inline]
    pub fn bit(&mut self, p: &mut Bit, bit: bool) {
        let bound = (self.range >> PROB_BITS) * u32::from(p.p0);
        if bit {
            self.low += u64::from(bound);
            self.range -= bound;
        } else {
            self.range = bound;
        }
        p.update(bit);
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// `bits` low bits of `v`, most significant first, through a binary tree of contexts
    /// (`tree` holds `1 << bits` entries; entry 0 is unused).
    #[inline]
    pub fn tree(&mut self, tree: &mut [Bit], bits: u32, v: u32) {
        let mut node = 1usize;
        for i in (0..bits).rev() {
            let b = (v >> i) & 1 != 0;
            self.bit(&mut tree[node], b);
            node = (node << 1) | usize::from(b);
        }
    }

    /// Flushes the coder state; the returned bytes decode to the same bits.
    pub fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

/// Decodes bits from a byte slice. Reading past the end yields zero bytes and is counted, so
/// that a caller can refuse a stream that ended early instead of trusting made-up bits.
pub struct Decoder<'a> {
    b: &'a [u8],
    pos: usize,
    range: u32,
    code: u32,
}

impl<'a> Decoder<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        let mut d = Self {
            b,
            pos: 0,
            range: u32::MAX,
            code: 0,
        };
        for _ in 0..5 {
            d.code = (d.code << 8) | u32::from(d.next_byte());
        }
        d
    }

    #[inline]
    fn next_byte(&mut self) -> u8 {
        let v = self.b.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        v
    }

    #[inline]
    pub fn bit(&mut self, p: &mut Bit) -> bool {
        let bound = (self.range >> PROB_BITS) * u32::from(p.p0);
        let bit = self.code >= bound;
        let mask = u32::from(bit).wrapping_neg();
        self.code -= bound & mask;
        self.range = (bound & !mask) | (self.range.wrapping_sub(bound) & mask);
        p.update(bit);
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte());
        }
        bit
    }

    /// Inverse of [`Encoder::tree`].
    #[inline]
    pub fn tree(&mut self, tree: &mut [Bit], bits: u32) -> u32 {
        let mut node = 1usize;
        for _ in 0..bits {
            let b = self.bit(&mut tree[node]);
            node = (node << 1) | usize::from(b);
        }
        (node - (1 << bits)) as u32
    }

    /// Whether the decoder consumed exactly the encoder's output (the encoder's flush writes
    /// 5 bytes, of which the decoder reads 4 ahead).
    pub fn consumed_all(&self) -> bool {
        self.pos == self.b.len()
    }

    /// Whether the decoder has read past the end of its input.
    pub fn overran(&self) -> bool {
        self.pos > self.b.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_bits_and_trees(
            bits in proptest::collection::vec(any::<bool>(), 0..2000),
            vals in proptest::collection::vec(0u32..512, 0..500),
        ) {
            let mut ctx = [Bit::default(); 4];
            let mut tree = vec![Bit::default(); 512];
            let mut e = Encoder::new(Vec::new());
            for (i, &b) in bits.iter().enumerate() {
                e.bit(&mut ctx[i % 4], b);
            }
            for &v in &vals {
                e.tree(&mut tree, 9, v);
            }
            let out = e.finish();
            let mut ctx = [Bit::default(); 4];
            let mut tree = vec![Bit::default(); 512];
            let mut d = Decoder::new(&out);
            for (i, &b) in bits.iter().enumerate() {
                prop_assert_eq!(d.bit(&mut ctx[i % 4]), b);
            }
            for &v in &vals {
                prop_assert_eq!(d.tree(&mut tree, 9), v);
            }
            prop_assert!(d.consumed_all());
        }
    }

    #[test]
    fn skewed_bits_cost_less_than_a_bit() {
        let mut p = Bit::default();
        let mut e = Encoder::new(Vec::new());
        for i in 0..8000 {
            e.bit(&mut p, i % 20 == 0);
        }
        // H(0.05) = 0.29 bits: 8000 bits in about 290 bytes.
        let n = e.finish().len();
        assert!(n < 400, "{n} bytes");
    }
}
