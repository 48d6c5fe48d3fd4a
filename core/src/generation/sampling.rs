//! Next-token choice from one row of logits, in transformers' order: repetition
//! penalty, then temperature, top-k, top-p and min-p, then a draw (or argmax when the
//! temperature is 0).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Resolved;

pub(crate) struct Sampler {
    temperature: f64,
    top_k: usize,
    top_p: f64,
    min_p: f64,
    repetition_penalty: f64,
    rng: ChaCha8Rng,
    /// Scratch: (logit, token) of the candidates.
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    pub(crate) fn new(cfg: &Resolved) -> Self {
        Self {
            temperature: cfg.temperature,
            top_k: cfg.top_k,
            top_p: cfg.top_p,
            min_p: cfg.min_p,
            repetition_penalty: cfg.repetition_penalty,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cand: Vec::new(),
        }
    }

    /// Picks the next token from `logits` (one row, modified in place); `seen` holds the
    /// prompt and the tokens generated so far (for the repetition penalty).
    pub(crate) fn next(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        if self.repetition_penalty != 1.0 {
            // CTRL's penalty as transformers applies it: once per distinct token.
            let p = self.repetition_penalty as f32;
            let mut done = std::collections::HashSet::with_capacity(seen.len());
            for &t in seen {
                if done.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = if *l < 0.0 { *l * p } else { *l / p };
                    }
                }
            }
        }
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        let inv_t = (1.0 / self.temperature) as f32;
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (l * inv_t, i as u32)));
        let cand = &mut self.cand;
        // Highest first; ties by token id so the order (and the draw) is deterministic.
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if self.top_k > 0 && self.top_k < cand.len() {
            cand.select_nth_unstable_by(self.top_k - 1, by_logit);
            cand.truncate(self.top_k);
        }
        cand.sort_unstable_by(by_logit);
        // Softmax over the survivors (in f64 for the cumulative sums).
        let max = cand.first().map_or(0.0, |c| c.0) as f64;
        let mut probs: Vec<f64> = cand.iter().map(|c| (c.0 as f64 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let mut keep = probs.len();
        if self.top_p < 1.0 {
            // Smallest prefix whose mass reaches top_p (at least one token).
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.min_p > 0.0 {
            let floor = self.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        let mass: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.random::<f64>() * mass;
        for (i, p) in probs[..keep].iter().enumerate() {
            u -= p;
            if u < 0.0 {
                return cand[i].1;
            }
        }
        cand[keep - 1].1
    }
}

/// Index of the first largest value (as `torch.argmax`).
pub(crate) fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || (xs[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(temperature: f64, top_k: usize, top_p: f64, min_p: f64, seed: u64) -> Resolved {
        Resolved { temperature, top_k, top_p, min_p, repetition_penalty: 1.0, seed, ..Resolved::greedy(8) }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&cfg(0.0, 0, 1.0, 0.0, 0));
        assert_eq!(s.next(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut c = cfg(0.0, 0, 1.0, 0.0, 0);
        c.repetition_penalty = 2.0;
        let mut s = Sampler::new(&c);
        let mut l = [4.0f32, 3.0, -1.0];
        // token 0: 4 -> 2, so token 1 (3.0) wins; token 2: -1 -> -2.
        assert_eq!(s.next(&mut l, &[0, 2, 0]), 1);
        assert_eq!(l, [2.0, 3.0, -2.0]);
    }

    #[test]
    fn filters_restrict_the_draw_and_seeds_repeat() {
        let logits = [1.0f32, 2.0, 3.0, 4.0, 0.5];
        let draw = |c: Resolved| -> Vec<u32> {
            let mut s = Sampler::new(&c);
            (0..400).map(|_| s.next(&mut logits.clone(), &[])).collect()
        };
        let all = draw(cfg(1.0, 0, 1.0, 0.0, 7));
        assert!((0..5).all(|t| all.contains(&t)), "plain sampling reaches every token");
        assert_eq!(all, draw(cfg(1.0, 0, 1.0, 0.0, 7)), "same seed, same tokens");
        assert_ne!(all, draw(cfg(1.0, 0, 1.0, 0.0, 8)));
        let k2 = draw(cfg(1.0, 2, 1.0, 0.0, 1));
        assert!(k2.iter().all(|t| [3, 2].contains(t)) && k2.contains(&2));
        // softmax(1,2,3,4,.5) = .032 .087 .237 .644 .019: top_p .8 keeps {3, 2}.
        let p = draw(cfg(1.0, 0, 0.8, 0.0, 1));
        assert!(p.iter().all(|t| [3, 2].contains(t)) && p.contains(&2));
        // min_p .1: floor .0644 keeps {3, 2, 1}.
        let m = draw(cfg(1.0, 0, 1.0, 0.1, 1));
        assert!(m.iter().all(|t| [3, 2, 1].contains(t)) && m.contains(&1));
        // A low temperature concentrates the draw on the best token.
        let cold = draw(cfg(0.05, 0, 1.0, 0.0, 1));
        assert!(cold.iter().all(|&t| t == 3));
    }
}
