//! Delivery: what happens to a sequence after a step and when it leaves.
//!
//! Sampled tokens stream to the request as [`TokenEvent::Token`]; a stop token or
//! `max_tokens` finishes it with one [`TokenEvent::Finished`]. Leaving the books (finished,
//! aborted, cancelled, failed) gives back its budget at once and frees its KV blocks on the
//! rank that holds them. The prefill → decode hand-over is in [`handover`], terminal errors in
//! [`failure`].

mod failure;
mod handover;

use std::sync::atomic::Ordering;

use moeflow_proto::v1 as pb;

use super::sequence::Role;
use super::{unix_ms, SchedState};
use moeflow_api::{FinishReason, TokenEvent, Usage};

impl SchedState {
    /// Streams sampled tokens and finishes sequences; returns the sequences that completed
    /// their prompt on the prefill group and must move to decode.
    pub(super) fn deliver(&mut self, responses: Vec<pb::StepResponse>) -> Vec<u64> {
        let mut to_move = Vec::new();
        for res in responses.into_iter().flat_map(|r| r.results) {
            let Some(r) = self.running.get_mut(&res.seq_id) else {
                continue;
            };
            if let Some(t) = r.trace.as_mut() {
                // A traced chunk always comes back with its routing; without it the trace
                // would silently miss tokens, so it is dropped instead.
                let appended = match res.routing.as_ref() {
                    Some(routing) => t.append(routing).map_err(|e| e.to_string()),
                    None => Err("a traced chunk came back without routing".to_string()),
                };
                if let Err(e) = appended {
                    tracing::warn!(request = %r.req.request_id, error = %e, "trace dropped");
                    r.trace = None;
                    if let Some(rec) = &self.cfg.trace {
                        rec.count_drop("invalid_routing");
                    }
                }
            }
            if !res.sampled {
                continue;
            }
            r.generated.push(res.token);
            let event = TokenEvent::Token {
                id: res.token,
                logprob: res.logprob,
                top: res
                    .top_logprobs
                    .iter()
                    .map(|t| (t.token, t.logprob))
                    .collect(),
            };
            if r.tx.try_send(event).is_err() {
                self.release(res.seq_id);
                continue;
            }
            let reason = if r.req.stop_token_ids.contains(&res.token) {
                Some(FinishReason::Stop)
            } else if r.generated.len() >= r.req.max_tokens as usize {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                let _ = r.tx.try_send(TokenEvent::Finished {
                    reason,
                    usage: r.usage(),
                });
                self.release(res.seq_id);
            } else if r.at.0 == Role::Prefill {
                to_move.push(res.seq_id);
            }
        }
        to_move
    }

    /// Removes a sequence from the books and frees its KV blocks wherever they are.
    pub(super) fn release(&mut self, seq: u64) {
        let Some(r) = self.running.remove(&seq) else {
            return;
        };
        self.by_id.remove(&r.req.request_id);
        if let (Some(rec), Some(t)) = (self.cfg.trace.as_ref(), r.trace) {
            // A request that ended before its first step ran has no routing to record.
            if t.iterations() > 0 {
                rec.record(t.finish(Some(unix_ms())));
            }
        }
        self.decode.budget.give_back(r.decode_rank, r.decode_blocks);
        if let (Some(p), Some(pr)) = (self.prefill.as_mut(), r.prefill_rank) {
            p.budget.give_back(pr, r.prefill_blocks);
        }
        let group = self.group(r.at.0).client.clone();
        let rank = r.at.1;
        tokio::spawn(async move {
            let _ = group.release(rank, vec![seq]).await;
        });
    }

    /// Sequences whose client went away are aborted and their KV blocks freed at once.
    pub(super) fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, r)| r.tx.is_closed())
            .map(|(s, _)| *s)
            .collect();
        for seq in gone {
            self.release(seq);
        }
        let before = self.waiting.len();
        self.waiting.retain(|w| !w.tx.is_closed());
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            self.shared.waiting.fetch_sub(dropped, Ordering::SeqCst);
        }
    }

    /// Ends request `id` with [`FinishReason::Abort`], waiting or running; false if it is
    /// unknown (or already ended).
    pub(super) fn abort(&mut self, id: &str) -> bool {
        if let Some(pos) = self.waiting.iter().position(|w| w.req.request_id == id) {
            if let Some(w) = self.waiting.remove(pos) {
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                let _ = w.tx.try_send(TokenEvent::Finished {
                    reason: FinishReason::Abort,
                    usage: Usage {
                        prompt_tokens: w.req.prompt.len() as u32,
                        completion_tokens: 0,
                    },
                });
            }
            return true;
        }
        let Some(&seq) = self.by_id.get(id) else {
            return false;
        };
        if let Some(r) = self.running.get(&seq) {
            let _ = r.tx.try_send(TokenEvent::Finished {
                reason: FinishReason::Abort,
                usage: r.usage(),
            });
        }
        self.release(seq);
        true
    }
}
