//! moeflow's compact binary trace format: a header with the model shape, then one
//! self-delimiting, checksummed block per request: its skeleton columns (deflated) and its
//! expert ids and gate weights, range-coded under an adaptive routing model that is reset
//! at every block. A live recorder appends and flushes one block per finished request; a
//! reader streams blocks one at a time, decodes them in parallel, and reports a truncated
//! last block instead of failing the whole file. Version-1 files (deflated byte columns)
//! still read. The byte layout is documented in `docs/trace-format.md`.
//!
//! Layout: `header` (magic, version, shape), `writer` and `reader` (blocks, checksums, the
//! end block), `v2` (this version's request payload: the `structure` skeleton and the ids
//! coded by `routing_model` through `range_coder`), `v1` (reading old payloads).

mod header;
mod range_coder;
mod reader;
mod routing_model;
mod structure;
mod v1;
mod v2;
mod writer;

use std::io::Read;

pub use header::sniff;
pub use reader::{BinaryReader, RawBlock};
pub use v2::{decode_request, encode_request};
pub use writer::BinaryWriter;

/// First bytes of every binary trace file.
pub const MAGIC: [u8; 8] = *b"MOEFLOWT";
/// Format version this code writes. It reads this one and version 1.
pub const VERSION: u16 = 2;
/// Oldest version this code reads.
pub const MIN_VERSION: u16 = 1;
const BLOCK_TAG: [u8; 4] = *b"MFRQ";
const END_TAG: [u8; 4] = *b"MFEN";
/// Version-1 block codecs: the payload stored or deflated.
const CODEC_RAW: u8 = 0;
const CODEC_DEFLATE: u8 = 1;
/// Version-2 block codec: skeleton plus range-coded ids and weights.
const CODEC_MODEL: u8 = 2;
const BLOCK_HEADER_LEN: usize = 17;
/// Largest header or block accepted, so that a corrupt length cannot make a reader allocate
/// gigabytes.
pub const MAX_BLOCK_LEN: u32 = 1 << 30;

/// Reads up to `buf.len()` bytes; fewer only at end of input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use half::f16;
    use proptest::prelude::*;

    use super::header::header_bytes;
    use super::v2::STRUCTURE_STORED;
    use super::*;
    use crate::io::{varint, FormatError, WriteError};
    use crate::model::{Iteration, LayerRouting, ModelShape, Phase, RequestTrace, MISSING_EXPERT};

    fn shape(num_experts: usize) -> ModelShape {
        ModelShape {
            model: Some("test/model".into()),
            num_layers: 3,
            num_experts,
            top_k: 2,
            moe_layers: vec![1, 2],
        }
    }

    fn request(n: usize) -> RequestTrace {
        RequestTrace {
            id: "q/1.json".into(),
            workload: Some("bench/subject".into()),
            prompt_len: 2,
            started_ms: Some(1_700_000_000_000),
            finished_ms: None,
            iterations: vec![
                Iteration {
                    phase: Phase::Prefill,
                    layers: vec![
                        LayerRouting {
                            layer: 1,
                            top_k: 2,
                            experts: vec![0, (n - 1) as u16, MISSING_EXPERT, MISSING_EXPERT],
                            weights: Some(vec![0.75, 0.25, 0.0, 0.0]),
                        },
                        LayerRouting {
                            layer: 2,
                            top_k: 2,
                            experts: vec![3, 1, 2, 0],
                            weights: None,
                        },
                    ],
                },
                Iteration {
                    phase: Phase::Decode,
                    layers: vec![LayerRouting {
                        layer: 2,
                        top_k: 2,
                        experts: vec![1, 2],
                        weights: None,
                    }],
                },
            ],
        }
    }

    #[test]
    fn round_trips_narrow_and_wide_ids_with_weights_and_gaps() {
        for n in [8usize, 256, 384, 4000] {
            let s = shape(n);
            let mut w = BinaryWriter::new(Vec::new(), &s).unwrap();
            w.append(&request(n)).unwrap();
            let bytes = w.finish().unwrap();
            let mut r = BinaryReader::new(&bytes[..]).unwrap();
            assert_eq!(r.shape(), &s);
            let got = r.next().unwrap().unwrap();
            assert_eq!(got, request(n));
            assert!(r.next().is_none());
            assert!(r.complete());
        }
    }

    #[test]
    fn writer_refuses_invalid_requests() {
        let mut w = BinaryWriter::new(Vec::new(), &shape(2)).unwrap();
        assert!(matches!(
            w.append(&request(8)),
            Err(WriteError::Invalid { .. })
        ));
    }

    #[test]
    fn truncated_last_block_is_reported_after_the_good_ones() {
        let s = shape(8);
        let mut w = BinaryWriter::new(Vec::new(), &s).unwrap();
        w.append(&request(8)).unwrap();
        w.append(&request(8)).unwrap();
        let bytes = w.finish().unwrap();
        let cut = &bytes[..bytes.len() - 16 - 5];
        let got: Vec<_> = BinaryReader::new(cut).unwrap().collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(matches!(got[1], Err(FormatError::Truncated(_))));
    }

    #[test]
    fn a_block_claiming_more_ids_than_it_can_hold_is_refused() {
        let mut skeleton = vec![0u8, 0, 0, 1, 0, 1, 1, 2];
        varint::put(&mut skeleton, 1 << 40);
        skeleton.push(0);
        let mut payload = vec![STRUCTURE_STORED];
        varint::put(&mut payload, skeleton.len() as u64);
        varint::put(&mut payload, skeleton.len() as u64);
        payload.extend_from_slice(&skeleton);
        let err = decode_request(&payload, &shape(8)).unwrap_err().to_string();
        assert!(err.contains("token count"), "{err}");
    }

    #[test]
    fn flipped_byte_fails_the_checksum() {
        let s = shape(8);
        let mut w = BinaryWriter::new(Vec::new(), &s).unwrap();
        w.append(&request(8)).unwrap();
        let mut bytes = w.finish().unwrap();
        let i = bytes.len() - 20;
        bytes[i] ^= 0x40;
        let got: Vec<_> = BinaryReader::new(&bytes[..]).unwrap().collect();
        assert!(matches!(got[0], Err(FormatError::Checksum(_))));
    }

    /// Requests of any shape the model accepts: prefill and decode, ids drawn from a few hot
    /// experts or anywhere (so candidates hit and miss), missing ids, weights or none.
    fn arb_request(e: usize, k: usize) -> impl Strategy<Value = RequestTrace> {
        let id = prop_oneof![0..e as u16, 0..4u16.min(e as u16), Just(MISSING_EXPERT)];
        // Any f16 but NaN, which never equals itself.
        let weight = any::<u16>().prop_map(|b| {
            let w = f16::from_bits(b);
            if w.is_nan() {
                0.0
            } else {
                w.to_f32()
            }
        });
        let entry = move |tokens: std::ops::Range<usize>| {
            (
                proptest::collection::vec(id.clone(), tokens.start * k..tokens.end * k),
                any::<bool>(),
                proptest::collection::vec(weight.clone(), 0..64 * k),
            )
                .prop_map(move |(mut ex, with_w, w)| {
                    ex.truncate(ex.len() / k * k);
                    let weights = (with_w && w.len() >= ex.len()).then(|| w[..ex.len()].to_vec());
                    (ex, weights)
                })
        };
        let layers = move |tokens: std::ops::Range<usize>| {
            proptest::collection::vec(entry(tokens), 2).prop_map(move |v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (experts, weights))| LayerRouting {
                        layer: i as u32 + 1,
                        top_k: k as u16,
                        experts,
                        weights,
                    })
                    .collect::<Vec<_>>()
            })
        };
        (layers(0..40), proptest::collection::vec(layers(1..2), 0..6)).prop_map(
            |(prefill, decode)| RequestTrace {
                id: "p".into(),
                workload: None,
                prompt_len: prefill[0].num_tokens(),
                started_ms: None,
                finished_ms: None,
                iterations: std::iter::once(Iteration {
                    phase: Phase::Prefill,
                    layers: prefill,
                })
                .chain(decode.into_iter().map(|layers| Iteration {
                    phase: Phase::Decode,
                    layers,
                }))
                .collect(),
            },
        )
    }

    proptest! {
        #[test]
        fn any_request_round_trips_exactly(
            (e, r) in prop_oneof![Just(3usize), Just(8), Just(256), Just(384), Just(5000)]
                .prop_flat_map(|e| (Just(e), arb_request(e, if e < 8 { 2 } else { 8 })))
        ) {
            let mut s = shape(e);
            s.top_k = if e < 8 { 2 } else { 8 };
            let mut w = BinaryWriter::new(Vec::new(), &s).unwrap();
            // Decode iterations hold one token per layer: skip requests the model refuses.
            if w.append(&r).is_ok() {
                let bytes = w.finish().unwrap();
                let got = BinaryReader::new(&bytes[..]).unwrap().next().unwrap().unwrap();
                prop_assert_eq!(got, r);
            }
        }

        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_request(&b, &shape(300));
            let _ = decode_request(&b, &shape(8));
            let mut with_magic = header_bytes(&shape(8));
            with_magic.extend_from_slice(&b);
            if let Ok(r) = BinaryReader::new(&with_magic[..]) {
                for item in r {
                    let _ = item;
                }
            }
        }
    }
}
