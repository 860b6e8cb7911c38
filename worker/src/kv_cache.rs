//! The KV cache, organised in fixed-size blocks per sequence.
//!
//! Every layer has one pool of blocks for keys and one for values; a sequence owns a list of
//! block ids (its block table), the same ids in every layer. Blocks are the unit of
//! allocation, freeing and (later) transfer between prefill and decode workers, so a finished
//! sequence returns its memory at once and a transfer moves whole blocks.

use std::collections::HashMap;

/// Identifies a sequence in a worker's cache. Chosen by the caller (the router).
pub type SeqId = u64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("KV cache is full: sequence {seq} needs {needed} more blocks, {free} free")]
    OutOfBlocks {
        seq: SeqId,
        needed: usize,
        free: usize,
    },
    #[error("sequence {seq} is not in the KV cache")]
    UnknownSeq { seq: SeqId },
    #[error(
        "sequence {seq}: input starts at position {start} but the cache holds {cached} tokens"
    )]
    PositionMismatch {
        seq: SeqId,
        start: usize,
        cached: usize,
    },
    #[error("sequence {seq} is already in the KV cache")]
    Exists { seq: SeqId },
    #[error("sequence {seq}: malformed KV transfer: {msg}")]
    BadTransfer { seq: SeqId, msg: String },
}

/// One sequence's keys and values, layer-major (`[layer][pos][width]`), as moved between
/// workers.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqKv {
    pub len: usize,
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

/// Sizes of a KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub num_layers: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Upper bound on blocks (memory is allocated as blocks are first used).
    pub num_blocks: usize,
    /// f32 elements of one token's key in one layer (all KV heads).
    pub key_width: usize,
    pub value_width: usize,
}

impl KvCacheConfig {
    /// Bytes one block takes over all layers (keys and values).
    pub fn block_bytes(&self) -> usize {
        self.num_layers * self.block_size * (self.key_width + self.value_width) * 4
    }
}

#[derive(Debug, Clone, Default)]
struct SeqBlocks {
    blocks: Vec<u32>,
    len: usize,
}

/// A paged KV cache in f32 (the cache stays f32 whatever the weights' dtype, so attention
/// accumulates in full precision).
#[derive(Debug)]
pub struct KvCache {
    cfg: KvCacheConfig,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Blocks handed out so far (ids below this have backing memory).
    allocated: usize,
    free: Vec<u32>,
    seqs: HashMap<SeqId, SeqBlocks>,
}

/// A read-only view of one sequence's keys and values in one layer.
pub struct SeqView<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    blocks: &'a [u32],
    block_size: usize,
    key_width: usize,
    value_width: usize,
}

impl SeqView<'_> {
    #[inline]
    pub fn key(&self, pos: usize) -> &[f32] {
        let b = self.blocks[pos / self.block_size] as usize;
        let off = (b * self.block_size + pos % self.block_size) * self.key_width;
        &self.keys[off..off + self.key_width]
    }

    #[inline]
    pub fn value(&self, pos: usize) -> &[f32] {
        let b = self.blocks[pos / self.block_size] as usize;
        let off = (b * self.block_size + pos % self.block_size) * self.value_width;
        &self.values[off..off + self.value_width]
    }
}

impl KvCache {
    pub fn new(cfg: KvCacheConfig) -> Self {
        Self {
            cfg,
            keys: vec![Vec::new(); cfg.num_layers],
            values: vec![Vec::new(); cfg.num_layers],
            allocated: 0,
            free: Vec::new(),
            seqs: HashMap::new(),
        }
    }

    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }

    /// Tokens cached for `seq`, if it is known.
    pub fn seq_len(&self, seq: SeqId) -> Option<usize> {
        self.seqs.get(&seq).map(|s| s.len)
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.seqs.contains_key(&seq)
    }

    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }

    pub fn block_table(&self, seq: SeqId) -> Option<&[u32]> {
        self.seqs.get(&seq).map(|s| s.blocks.as_slice())
    }

    /// Blocks currently owned by sequences.
    pub fn used_blocks(&self) -> usize {
        self.allocated - self.free.len()
    }

    pub fn free_blocks(&self) -> usize {
        self.cfg.num_blocks - self.used_blocks()
    }

    /// Fraction of the block budget in use, 0..=1.
    pub fn usage(&self) -> f32 {
        if self.cfg.num_blocks == 0 {
            return 0.0;
        }
        self.used_blocks() as f32 / self.cfg.num_blocks as f32
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.cfg.block_size)
    }

    /// Blocks `seq` would need in addition to what it holds to grow to `new_len` tokens.
    pub fn blocks_needed(&self, seq: SeqId, new_len: usize) -> usize {
        let have = self.seqs.get(&seq).map_or(0, |s| s.blocks.len());
        self.blocks_for(new_len).saturating_sub(have)
    }

    /// Makes room for `seq` to hold `new_len` tokens, creating the sequence if it is new.
    /// Either every needed block is reserved or nothing changes.
    pub fn reserve(&mut self, seq: SeqId, new_len: usize) -> Result<(), KvError> {
        let needed = self.blocks_needed(seq, new_len);
        if needed > self.free_blocks() {
            return Err(KvError::OutOfBlocks {
                seq,
                needed,
                free: self.free_blocks(),
            });
        }
        let mut fresh = Vec::with_capacity(needed);
        for _ in 0..needed {
            let id = match self.free.pop() {
                Some(id) => id,
                None => {
                    let id = self.allocated as u32;
                    self.allocated += 1;
                    self.grow_to(self.allocated);
                    id
                }
            };
            fresh.push(id);
        }
        self.seqs.entry(seq).or_default().blocks.extend(fresh);
        Ok(())
    }

    fn grow_to(&mut self, blocks: usize) {
        let (bs, kw, vw) = (
            self.cfg.block_size,
            self.cfg.key_width,
            self.cfg.value_width,
        );
        for k in &mut self.keys {
            k.resize(blocks * bs * kw, 0.0);
        }
        for v in &mut self.values {
            v.resize(blocks * bs * vw, 0.0);
        }
    }

    /// Checks that new tokens for `seq` start where its cache ends (a new sequence starts at 0).
    pub fn check_start(&self, seq: SeqId, start: usize) -> Result<(), KvError> {
        let cached = self.seq_len(seq).unwrap_or(0);
        if cached != start {
            return Err(KvError::PositionMismatch { seq, start, cached });
        }
        Ok(())
    }

    /// Stores the key and value of `seq` at `pos` in `layer`. The block must be reserved.
    pub fn write(
        &mut self,
        layer: usize,
        seq: SeqId,
        pos: usize,
        key: &[f32],
        value: &[f32],
    ) -> Result<(), KvError> {
        let (bs, kw, vw) = (
            self.cfg.block_size,
            self.cfg.key_width,
            self.cfg.value_width,
        );
        let s = self.seqs.get(&seq).ok_or(KvError::UnknownSeq { seq })?;
        let Some(&b) = s.blocks.get(pos / bs) else {
            return Err(KvError::OutOfBlocks {
                seq,
                needed: pos / bs + 1 - s.blocks.len(),
                free: self.free_blocks(),
            });
        };
        let slot = b as usize * bs + pos % bs;
        self.keys[layer][slot * kw..(slot + 1) * kw].copy_from_slice(key);
        self.values[layer][slot * vw..(slot + 1) * vw].copy_from_slice(value);
        Ok(())
    }

    /// Records that `seq` now holds `len` tokens (after all layers were written).
    pub fn set_len(&mut self, seq: SeqId, len: usize) -> Result<(), KvError> {
        let s = self.seqs.get_mut(&seq).ok_or(KvError::UnknownSeq { seq })?;
        s.len = len;
        Ok(())
    }

    /// A view of `seq` in `layer` for attention.
    pub fn view(&self, layer: usize, seq: SeqId) -> Result<SeqView<'_>, KvError> {
        let s = self.seqs.get(&seq).ok_or(KvError::UnknownSeq { seq })?;
        Ok(SeqView {
            keys: &self.keys[layer],
            values: &self.values[layer],
            blocks: &s.blocks,
            block_size: self.cfg.block_size,
            key_width: self.cfg.key_width,
            value_width: self.cfg.value_width,
        })
    }

    /// Frees every block of `seq`; returns how many were freed (0 for an unknown sequence).
    pub fn free(&mut self, seq: SeqId) -> usize {
        match self.seqs.remove(&seq) {
            Some(s) => {
                let n = s.blocks.len();
                self.free.extend(s.blocks);
                n
            }
            None => 0,
        }
    }

    /// Copies out every cached token of `seq`, layer by layer, for transfer to another worker
    /// (prefill → decode). The layout is independent of block ids.
    pub fn export(&self, seq: SeqId) -> Result<SeqKv, KvError> {
        let s = self.seqs.get(&seq).ok_or(KvError::UnknownSeq { seq })?;
        let (kw, vw) = (self.cfg.key_width, self.cfg.value_width);
        let mut keys = Vec::with_capacity(self.cfg.num_layers * s.len * kw);
        let mut values = Vec::with_capacity(self.cfg.num_layers * s.len * vw);
        for layer in 0..self.cfg.num_layers {
            let view = self.view(layer, seq)?;
            for pos in 0..s.len {
                keys.extend_from_slice(view.key(pos));
                values.extend_from_slice(view.value(pos));
            }
        }
        Ok(SeqKv {
            len: s.len,
            keys,
            values,
        })
    }

    /// Installs a transferred sequence (which must not exist here yet). All or nothing.
    pub fn import(&mut self, seq: SeqId, kv: &SeqKv) -> Result<(), KvError> {
        let (kw, vw, layers) = (
            self.cfg.key_width,
            self.cfg.value_width,
            self.cfg.num_layers,
        );
        if self.contains(seq) {
            return Err(KvError::Exists { seq });
        }
        if kv.keys.len() != layers * kv.len * kw || kv.values.len() != layers * kv.len * vw {
            return Err(KvError::BadTransfer {
                seq,
                msg: format!(
                    "{} key and {} value floats for {} tokens of {layers} layers (widths {kw}/{vw})",
                    kv.keys.len(),
                    kv.values.len(),
                    kv.len
                ),
            });
        }
        self.reserve(seq, kv.len)?;
        for layer in 0..layers {
            for pos in 0..kv.len {
                let k = (layer * kv.len + pos) * kw;
                let v = (layer * kv.len + pos) * vw;
                self.write(layer, seq, pos, &kv.keys[k..k + kw], &kv.values[v..v + vw])?;
            }
        }
        self.set_len(seq, kv.len)
    }

    /// Drops tokens past `len` from `seq` (a failed step rolls back what it reserved).
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        let need = self.blocks_for(len);
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.len = s.len.min(len);
            while s.blocks.len() > need {
                if let Some(b) = s.blocks.pop() {
                    self.free.push(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(blocks: usize) -> KvCache {
        KvCache::new(KvCacheConfig {
            num_layers: 2,
            block_size: 4,
            num_blocks: blocks,
            key_width: 3,
            value_width: 2,
        })
    }

    #[test]
    fn reserve_write_read_free() {
        let mut c = cache(4);
        c.reserve(7, 6).unwrap();
        assert_eq!(c.used_blocks(), 2);
        for pos in 0..6 {
            let k = [pos as f32; 3];
            let v = [-(pos as f32); 2];
            c.write(1, 7, pos, &k, &v).unwrap();
        }
        c.set_len(7, 6).unwrap();
        let view = c.view(1, 7).unwrap();
        assert_eq!(view.key(5), &[5.0; 3]);
        assert_eq!(view.value(4), &[-4.0; 2]);
        assert_eq!(c.free(7), 2);
        assert_eq!(c.used_blocks(), 0);
        assert_eq!(c.usage(), 0.0);
    }

    #[test]
    fn out_of_blocks_changes_nothing() {
        let mut c = cache(2);
        c.reserve(1, 4).unwrap();
        let err = c.reserve(2, 9).unwrap_err();
        assert!(matches!(
            err,
            KvError::OutOfBlocks {
                needed: 3,
                free: 1,
                ..
            }
        ));
        assert!(!c.contains(2));
        assert_eq!(c.used_blocks(), 1);
    }

    #[test]
    fn export_import_round_trips_across_caches() {
        let mut a = cache(4);
        a.reserve(3, 5).unwrap();
        for layer in 0..2 {
            for pos in 0..5 {
                let k = [(layer * 10 + pos) as f32; 3];
                let v = [-((layer * 10 + pos) as f32); 2];
                a.write(layer, 3, pos, &k, &v).unwrap();
            }
        }
        a.set_len(3, 5).unwrap();
        let kv = a.export(3).unwrap();
        let mut b = cache(4);
        b.reserve(99, 4).unwrap(); // other block ids in use on the receiver
        b.import(3, &kv).unwrap();
        assert_eq!(b.seq_len(3), Some(5));
        assert_eq!(b.view(1, 3).unwrap().key(4), &[14.0; 3]);
        assert_eq!(b.export(3).unwrap(), kv);
        assert!(matches!(b.import(3, &kv), Err(KvError::Exists { .. })));
        let mut bad = kv.clone();
        bad.keys.pop();
        assert!(matches!(
            cache(4).import(1, &bad),
            Err(KvError::BadTransfer { .. })
        ));
    }

    #[test]
    fn freed_blocks_are_reused() {
        let mut c = cache(2);
        c.reserve(1, 8).unwrap();
        c.free(1);
        c.reserve(2, 8).unwrap();
        assert_eq!(c.used_blocks(), 2);
        assert!(c.check_start(2, 0).is_ok());
        assert!(c.check_start(2, 3).is_err());
    }
}
