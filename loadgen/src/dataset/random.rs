//! Random prompts: words from [`WORDS`] drawn with a seeded generator, one word per
//! requested token.

use rand::{Rng, SeedableRng};

use super::words::WORDS;
use super::Prompt;
use crate::error::LoadgenError;

/// `n` prompts of about `input_len` tokens asking for `output_len` tokens each, both spread
/// by `range_ratio` (0 = exact; must be below 1).
pub fn random_prompts(
    n: usize,
    input_len: u32,
    output_len: u32,
    range_ratio: f64,
    seed: u64,
) -> Result<Vec<Prompt>, LoadgenError> {
    if input_len == 0 || output_len == 0 {
        return Err(LoadgenError::Config(
            "--random-input-len and --random-output-len must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&range_ratio) {
        return Err(LoadgenError::Config(format!(
            "--random-range-ratio {range_ratio}: must be in [0, 1)"
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut prompts = Vec::with_capacity(n);
    for _ in 0..n {
        let words = spread(&mut rng, input_len, range_ratio);
        let out = spread(&mut rng, output_len, range_ratio);
        let mut text = String::with_capacity(words as usize * 6);
        for i in 0..words {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
        prompts.push(Prompt {
            text,
            estimated_tokens: u64::from(words),
            output_len: out,
        });
    }
    Ok(prompts)
}

/// A length drawn uniformly from `[floor(len (1 - r)), ceil(len (1 + r))]`, at least 1.
fn spread(rng: &mut impl Rng, len: u32, r: f64) -> u32 {
    let lo = ((f64::from(len) * (1.0 - r)).floor() as u32).max(1);
    let hi = ((f64::from(len) * (1.0 + r)).ceil() as u32).max(lo);
    rng.random_range(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_lengths_without_spread_and_seeded() {
        let p = random_prompts(4, 32, 8, 0.0, 1).unwrap();
        assert_eq!(p.len(), 4);
        for q in &p {
            assert_eq!(q.text.split(' ').count(), 32);
            assert_eq!((q.estimated_tokens, q.output_len), (32, 8));
        }
        assert_ne!(p[0].text, p[1].text);
        assert_eq!(p, random_prompts(4, 32, 8, 0.0, 1).unwrap());
        assert_ne!(p, random_prompts(4, 32, 8, 0.0, 2).unwrap());
    }

    #[test]
    fn spread_stays_in_range_and_varies() {
        let p = random_prompts(200, 100, 50, 0.5, 3).unwrap();
        assert!(p.iter().all(|q| (50..=150).contains(&q.estimated_tokens)));
        assert!(p.iter().all(|q| (25..=75).contains(&q.output_len)));
        let distinct: std::collections::BTreeSet<_> = p.iter().map(|q| q.output_len).collect();
        assert!(distinct.len() > 10);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(random_prompts(1, 0, 8, 0.0, 0).is_err());
        assert!(random_prompts(1, 8, 8, 1.0, 0).is_err());
    }
}
