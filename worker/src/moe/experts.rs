//! The routed experts a process hosts, addressable one by one.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::{Routing, WeightApplication};
use crate::error::{ModelError, Result};
use crate::nn::{kernels, SwiGlu};

/// The experts of one MoE layer that this process hosts (any subset, replicas included).
#[derive(Debug, Clone)]
pub struct LayerExperts {
    layer: usize,
    hidden: usize,
    experts: Vec<Option<SwiGlu>>,
}

/// One unit of routed work: input row `row` goes through `expert`; its result, scaled by
/// `weight`, is added to output row `row`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment {
    pub row: u32,
    pub expert: u32,
    pub weight: f32,
}

impl LayerExperts {
    /// An empty set for a layer of `num_experts` experts.
    pub fn new(layer: usize, num_experts: usize, hidden: usize) -> Self {
        Self {
            layer,
            hidden,
            experts: vec![None; num_experts],
        }
    }

    pub fn insert(&mut self, expert: u32, ffn: SwiGlu) {
        if let Some(slot) = self.experts.get_mut(expert as usize) {
            *slot = Some(ffn);
        }
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    pub fn hosts(&self, expert: u32) -> bool {
        self.experts
            .get(expert as usize)
            .is_some_and(Option::is_some)
    }

    /// Ids of the hosted experts, ascending.
    pub fn hosted(&self) -> Vec<u32> {
        (0..self.experts.len() as u32)
            .filter(|&e| self.hosts(e))
            .collect()
    }

    pub fn expert(&self, expert: u32) -> Option<&SwiGlu> {
        self.experts.get(expert as usize).and_then(Option::as_ref)
    }

    /// Every token's selections, all computed here (single process).
    pub fn compute_routing(&self, x: &Tensor, routing: &Routing) -> Result<Tensor> {
        let assignments: Vec<Assignment> = routing
            .ids
            .iter()
            .zip(&routing.weights)
            .enumerate()
            .map(|(i, (&expert, &weight))| Assignment {
                row: (i / routing.top_k.max(1)) as u32,
                expert,
                weight,
            })
            .collect();
        self.compute(x, &assignments, routing.apply, x.dims()[0])
    }

    /// Runs `assignments` on the hosted experts: output row `r` is the weighted sum of the
    /// expert outputs for input row `r` (rows without assignments are zero).
    pub fn compute(
        &self,
        x: &Tensor,
        assignments: &[Assignment],
        apply: WeightApplication,
        out_rows: usize,
    ) -> Result<Tensor> {
        let in_rows = x.dims().first().copied().unwrap_or(0);
        for a in assignments {
            if !self.hosts(a.expert) {
                return Err(ModelError::ExpertNotHosted {
                    layer: self.layer,
                    expert: a.expert,
                });
            }
            if a.row as usize >= out_rows || a.row as usize >= in_rows {
                return Err(ModelError::Input(format!(
                    "layer {}: assignment row {} out of range ({in_rows} input rows, {out_rows} output rows)",
                    self.layer, a.row
                )));
            }
        }
        if let Some(out) = self.compute_f32_cpu(x, assignments, apply, out_rows) {
            return Ok(Tensor::from_vec(out, (out_rows, self.hidden), x.device())?);
        }
        self.compute_candle(x, assignments, apply, out_rows)
    }

    /// The f32 CPU path (`None` when `x` or a busy expert's weights are not contiguous f32
    /// CPU tensors). Assignments are validated by the caller.
    ///
    /// The rows of all assignments are gathered, sorted by expert, into one matrix; every
    /// busy expert runs as one group of [`kernels::grouped_swiglu`] (GEMMs over all its rows,
    /// the routing weight folded into the activation); then each output row sums its
    /// assignments' results in assignment order, so the result does not depend on how the
    /// work was scheduled.
    fn compute_f32_cpu(
        &self,
        x: &Tensor,
        assignments: &[Assignment],
        apply: WeightApplication,
        out_rows: usize,
    ) -> Option<Vec<f32>> {
        let h = self.hidden;
        if x.dims() != [x.dims().first().copied()?, h] {
            return None;
        }
        let xg = kernels::F32Guard::new(x)?;
        let xs = xg.slice();
        let n = assignments.len();

        // Counting sort of the assignments by expert: `order[p]` is the assignment at sorted
        // position p, `pos[i]` the sorted position of assignment i.
        let ne = self.experts.len();
        let mut start = vec![0usize; ne + 1];
        for a in assignments {
            start[a.expert as usize + 1] += 1;
        }
        for e in 0..ne {
            start[e + 1] += start[e];
        }
        let mut next = start.clone();
        let mut pos = vec![0usize; n];
        let mut order = vec![0usize; n];
        for (i, a) in assignments.iter().enumerate() {
            let p = &mut next[a.expert as usize];
            pos[i] = *p;
            order[*p] = i;
            *p += 1;
        }

        // Borrow every busy expert's weights (all f32 CPU, or the candle path).
        let mut guards = Vec::new();
        let mut ffn = 0;
        for e in 0..ne {
            if start[e + 1] > start[e] {
                let expert = self.experts[e].as_ref()?;
                if !guards.is_empty() && expert.ffn() != ffn {
                    return None;
                }
                ffn = expert.ffn();
                guards.push((e, expert.f32_weights()?));
            }
        }
        if guards
            .iter()
            .any(|(_, (gu, _))| gu.slice().len() != h * 2 * ffn)
        {
            return None;
        }
        let groups: Vec<kernels::GroupWork<'_>> = guards
            .iter()
            .map(|(e, (gu, d))| kernels::GroupWork {
                ffn: kernels::SwiGluRef {
                    gate_up: gu.slice(),
                    down: d.slice(),
                },
                rows: start[*e]..start[*e + 1],
            })
            .collect();

        // Gather the input rows in sorted order; Llama-4 scales them by the routing weight.
        let mut gathered = kernels::Scratch::take(n * h);
        let gather = |(p, dst): (usize, &mut [f32])| {
            let a = &assignments[order[p]];
            let src = &xs[a.row as usize * h..(a.row as usize + 1) * h];
            match apply {
                WeightApplication::Input => {
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = s * a.weight;
                    }
                }
                WeightApplication::Output => dst.copy_from_slice(src),
            }
        };
        let big = n * h >= 1 << 16;
        if big {
            gathered.par_chunks_mut(h).enumerate().for_each(gather);
        } else {
            gathered.chunks_mut(h).enumerate().for_each(gather);
        }
        let scale: Option<Vec<f32>> = match apply {
            WeightApplication::Output => {
                Some(order.iter().map(|&i| assignments[i].weight).collect())
            }
            WeightApplication::Input => None,
        };
        let y = kernels::grouped_swiglu(&gathered, &groups, h, ffn, scale.as_deref());
        drop(gathered);

        // Each output row: the sum of its assignments' results, in assignment order.
        let mut row_start = vec![0usize; out_rows + 1];
        for a in assignments {
            row_start[a.row as usize + 1] += 1;
        }
        for r in 0..out_rows {
            row_start[r + 1] += row_start[r];
        }
        let mut fill = row_start.clone();
        let mut by_row = vec![0usize; n];
        for (i, a) in assignments.iter().enumerate() {
            by_row[fill[a.row as usize]] = pos[i];
            fill[a.row as usize] += 1;
        }
        let mut out = vec![0f32; out_rows * h];
        let reduce = |(r, dst): (usize, &mut [f32])| {
            for &p in &by_row[row_start[r]..row_start[r + 1]] {
                for (d, s) in dst.iter_mut().zip(&y[p * h..(p + 1) * h]) {
                    *d += s;
                }
            }
        };
        if big {
            out.par_chunks_mut(h).enumerate().for_each(reduce);
        } else {
            out.chunks_mut(h).enumerate().for_each(reduce);
        }
        Some(out)
    }

    /// Candle ops, one expert at a time: any dtype and device.
    fn compute_candle(
        &self,
        x: &Tensor,
        assignments: &[Assignment],
        apply: WeightApplication,
        out_rows: usize,
    ) -> Result<Tensor> {
        let h = self.hidden;
        let mut by_expert: BTreeMap<u32, (Vec<u32>, Vec<f32>)> = BTreeMap::new();
        for a in assignments {
            let e = by_expert.entry(a.expert).or_default();
            e.0.push(a.row);
            e.1.push(a.weight);
        }
        let dtype = x.dtype();
        let device: &Device = x.device();
        let mut out = vec![0f32; out_rows * h];
        for (expert, (rows, weights)) in by_expert {
            let ffn = self.expert(expert).ok_or(ModelError::ExpertNotHosted {
                layer: self.layer,
                expert,
            })?;
            let n = rows.len();
            let idx = Tensor::from_vec(rows.clone(), n, device)?;
            let w = Tensor::from_vec(weights, (n, 1), device)?.to_dtype(dtype)?;
            let xs = x.index_select(&idx, 0)?;
            let y = match apply {
                WeightApplication::Input => ffn.forward(&xs.broadcast_mul(&w)?)?,
                WeightApplication::Output => ffn.forward(&xs)?.broadcast_mul(&w)?,
            };
            let y = y
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (i, &r) in rows.iter().enumerate() {
                let dst = &mut out[r as usize * h..(r as usize + 1) * h];
                for (d, s) in dst.iter_mut().zip(&y[i * h..(i + 1) * h]) {
                    *d += s;
                }
            }
        }
        Ok(Tensor::from_vec(out, (out_rows, h), device)?.to_dtype(dtype)?)
    }
}

/// The hosted experts of every MoE layer, keyed by layer index.
#[derive(Debug, Clone, Default)]
pub struct ExpertSet {
    layers: BTreeMap<usize, LayerExperts>,
}

impl ExpertSet {
    pub fn insert_layer(&mut self, experts: LayerExperts) {
        self.layers.insert(experts.layer(), experts);
    }

    pub fn layer(&self, layer: usize) -> Option<&LayerExperts> {
        self.layers.get(&layer)
    }

    pub fn layers(&self) -> impl Iterator<Item = &LayerExperts> {
        self.layers.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn layer(dtype: DType) -> LayerExperts {
        let (h, f, e) = (16, 24, 5);
        let dev = Device::Cpu;
        let mut set = LayerExperts::new(3, e + 1, h);
        // Expert `e` (the last id) stays unhosted.
        for id in 0..e {
            let gu: Vec<f32> = (0..h * 2 * f)
                .map(|i| (((i * 31 + id * 7) % 19) as f32 - 9.0) * 0.03)
                .collect();
            let d: Vec<f32> = (0..f * h)
                .map(|i| (((i * 17 + id * 3) % 13) as f32 - 6.0) * 0.04)
                .collect();
            let ffn = SwiGlu::from_input_major(
                Tensor::from_vec(gu, (h, 2 * f), &dev)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap(),
                Tensor::from_vec(d, (f, h), &dev)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap(),
            )
            .unwrap();
            set.insert(id as u32, ffn);
        }
        set
    }

    fn input(rows: usize) -> Tensor {
        let x: Vec<f32> = (0..rows * 16)
            .map(|i| ((i % 29) as f32 - 14.0) * 0.07)
            .collect();
        Tensor::from_vec(x, (rows, 16), &Device::Cpu).unwrap()
    }

    /// Unordered assignments, repeated rows, a row without assignments, one expert with
    /// most rows: the fast path agrees with the candle path for both weight applications.
    #[test]
    fn f32_path_matches_candle_path() {
        let set = layer(DType::F32);
        let rows = 40;
        let x = input(rows);
        let mut asg = Vec::new();
        for r in (0..rows as u32).rev().filter(|&r| r != 7) {
            asg.push(Assignment {
                row: r,
                expert: 0,
                weight: 0.3,
            });
            asg.push(Assignment {
                row: r,
                expert: (r * 3) % 5,
                weight: 0.1 + r as f32 * 0.01,
            });
            if r % 4 == 0 {
                asg.push(Assignment {
                    row: r,
                    expert: 4,
                    weight: -0.5,
                });
            }
        }
        for apply in [WeightApplication::Output, WeightApplication::Input] {
            let fast = set.compute(&x, &asg, apply, rows).unwrap();
            let slow = set.compute_candle(&x, &asg, apply, rows).unwrap();
            let (fast, slow) = (
                fast.to_vec2::<f32>().unwrap(),
                slow.to_vec2::<f32>().unwrap(),
            );
            assert!(fast[7].iter().all(|&v| v == 0.0));
            for (r, (a, b)) in fast.iter().zip(&slow).enumerate() {
                for (c, (a, b)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "{apply:?} row {r} col {c}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_takes_the_candle_path_and_errors_name_the_problem() {
        let set = layer(DType::BF16);
        let x = input(3).to_dtype(DType::BF16).unwrap();
        let asg = [Assignment {
            row: 2,
            expert: 1,
            weight: 1.0,
        }];
        let y = set.compute(&x, &asg, WeightApplication::Output, 3).unwrap();
        assert_eq!((y.dims(), y.dtype()), (&[3, 16][..], DType::BF16));

        let f32s = layer(DType::F32);
        let x = input(3);
        let unhosted = [Assignment {
            row: 0,
            expert: 5,
            weight: 1.0,
        }];
        assert!(matches!(
            f32s.compute(&x, &unhosted, WeightApplication::Output, 3),
            Err(ModelError::ExpertNotHosted {
                layer: 3,
                expert: 5
            })
        ));
        let out_of_range = [Assignment {
            row: 3,
            expert: 0,
            weight: 1.0,
        }];
        let err = f32s
            .compute(&x, &out_of_range, WeightApplication::Output, 3)
            .unwrap_err();
        assert!(err.to_string().contains("row 3"), "{err}");
    }
}
