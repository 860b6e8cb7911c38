//! Small numeric helpers shared by the statistic families. Every function returns `None` where
//! the statistic is undefined (no data, constant input) so that a report never shows a made-up
//! zero.

/// Largest value over the mean; `None` for an empty or all-zero vector.
pub fn max_over_mean(counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return None;
    }
    let mean = total as f64 / counts.len() as f64;
    let max = counts.iter().copied().max().unwrap_or(0);
    Some(max as f64 / mean)
}

/// Gini coefficient of the load (0 = perfectly even, (n-1)/n = one expert takes all).
pub fn gini(counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if counts.is_empty() || total == 0 {
        return None;
    }
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    let n = sorted.len() as f64;
    let weighted: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, &c)| (i as f64 + 1.0) * c as f64)
        .sum();
    Some((2.0 * weighted) / (n * total as f64) - (n + 1.0) / n)
}

/// Pearson correlation; `None` when the lengths differ, fewer than two points, or either
/// side is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let n = a.len() as f64;
    let ma = a.iter().sum::<f64>() / n;
    let mb = b.iter().sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        return None;
    }
    Some((sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0))
}

/// Pearson on counts.
pub fn pearson_counts(a: &[u64], b: &[u64]) -> Option<f64> {
    pearson(&to_f64(a), &to_f64(b))
}

/// Spearman rank correlation, ties given their average rank.
pub fn spearman_counts(a: &[u64], b: &[u64]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    pearson(&ranks(a), &ranks(b))
}

fn to_f64(v: &[u64]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Average ranks (1-based) with ties sharing the mean of their positions.
pub fn ranks(v: &[u64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by_key(|&i| v[i]);
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Expert ids of the `n` largest counts, largest first, ties broken by the lower id so that
/// the result does not depend on the order data arrived in.
pub fn top_n(counts: &[u64], n: usize) -> Vec<u16> {
    let mut idx: Vec<usize> = (0..counts.len()).collect();
    idx.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    idx.truncate(n);
    idx.into_iter().map(|i| i as u16).collect()
}

/// |a ∩ b| / |a ∪ b|; `None` when both are empty.
pub fn jaccard(a: &[u16], b: &[u16]) -> Option<f64> {
    let inter = a.iter().filter(|x| b.contains(x)).count();
    let union = a.len() + b.len() - inter;
    (union > 0).then(|| inter as f64 / union as f64)
}

/// Mean of the values that exist; `None` when none do.
pub fn mean_some(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values.into_iter().flatten() {
        sum += v;
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

/// Number of candidates in the "top fraction" of `n` (at least one).
pub fn top_count(fraction: f64, n: usize) -> usize {
    ((fraction * n as f64).ceil() as usize).clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_measures() {
        assert_eq!(max_over_mean(&[1, 1, 1, 1]), Some(1.0));
        assert_eq!(max_over_mean(&[4, 0, 0, 0]), Some(4.0));
        assert_eq!(max_over_mean(&[0, 0]), None);
        assert!(gini(&[5, 5, 5]).unwrap().abs() < 1e-12);
        assert!((gini(&[0, 0, 0, 9]).unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(gini(&[]), None);
    }

    #[test]
    fn correlations() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&a, &[2.0, 4.0, 6.0, 8.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&a, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&a, &[1.0, 1.0, 1.0, 1.0]), None);
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let x = [1, 2, 3, 4, 5];
        let y = [1, 4, 9, 16, 100];
        assert!((spearman_counts(&x, &y).unwrap() - 1.0).abs() < 1e-12);
        assert!(pearson_counts(&x, &y).unwrap() < 0.99);
        assert_eq!(ranks(&[10, 20, 10, 30]), vec![1.5, 3.0, 1.5, 4.0]);
    }

    #[test]
    fn sets() {
        assert_eq!(top_n(&[3, 9, 9, 1], 2), vec![1, 2]);
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), Some(0.5));
        assert_eq!(jaccard(&[], &[]), None);
        assert_eq!(top_count(0.2, 256), 52);
        assert_eq!(top_count(0.2, 8), 2);
        assert_eq!(mean_some([Some(1.0), None, Some(3.0)]), Some(2.0));
        assert_eq!(mean_some([None]), None);
    }
}
