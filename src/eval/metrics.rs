//! Text similarity metrics, computed as the reference packages compute them,
//! so a score from `ferrite eval` means what the same name means elsewhere:
//!
//! - BLEU: sacrebleu 2.x `corpus_bleu` / `sentence_bleu` defaults (the `13a`
//!   tokenizer of mteval-v13a, case-sensitive, n-grams up to 4, brevity
//!   penalty, `exp` smoothing: Chen & Cherry 2014, method 3). Sentence BLEU
//!   uses effective order, as `sentence_bleu` does. Scale 0–100.
//! - chrF: sacrebleu's `CHRF()` defaults (character n-grams 1–6 with
//!   whitespace removed, no word n-grams, β = 2; Popović 2015). Scale 0–100.
//! - ROUGE-L: Google's `rouge-score` `RougeScorer(["rougeL"])` without
//!   stemming (lower-cased, split on anything not `[a-z0-9]`), the F-measure
//!   of the longest common subsequence. Scale 0–1.
//!
//! Corpus scores follow the packages: BLEU and chrF sum each sentence's
//! statistics and score the sums; ROUGE-L is the mean of the sentence
//! F-measures (what rouge-score's `BootstrapAggregator` reports as mid).

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

/// n-gram orders of BLEU (sacrebleu's `MAX_NGRAM_ORDER`).
const BLEU_ORDER: usize = 4;
/// Character n-gram orders of chrF (sacrebleu's `CHRF.CHAR_ORDER`).
const CHRF_ORDER: usize = 6;
/// chrF's β: recall weighs β² times precision.
const CHRF_BETA: f64 = 2.0;

/// sacrebleu's `Tokenizer13a`: mteval-v13a's tokenization of one segment.
pub fn tokenize_13a(line: &str) -> String {
    static RULES: OnceLock<[(Regex, &'static str); 4]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [
            // Symbols: {-~ [-` space-& (-+ :-@ /
            (Regex::new(r"([\{-~\[-` -&\(-\+:-@/])").unwrap(), " $1 "),
            // Period and comma unless preceded by a digit.
            (Regex::new(r"([^0-9])([\.,])").unwrap(), "$1 $2 "),
            // Period and comma unless followed by a digit.
            (Regex::new(r"([\.,])([^0-9])").unwrap(), " $1 $2"),
            // Dash after a digit.
            (Regex::new(r"([0-9])(-)").unwrap(), "$1 $2 "),
        ]
    });
    let mut line = line
        .trim_end()
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (re, rep) in rules {
        line = re.replace_all(&line, *rep).into_owned();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn word_ngrams<'a>(tokens: &[&'a str], n: usize) -> HashMap<Vec<&'a str>, usize> {
    let mut m = HashMap::new();
    for w in tokens.windows(n) {
        *m.entry(w.to_vec()).or_insert(0) += 1;
    }
    m
}

/// BLEU's sufficient statistics for one sentence: hypothesis and reference
/// lengths in tokens, and matched and total n-grams per order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BleuStats {
    pub hyp_len: usize,
    pub ref_len: usize,
    pub correct: [usize; BLEU_ORDER],
    pub total: [usize; BLEU_ORDER],
}

impl std::ops::AddAssign for BleuStats {
    fn add_assign(&mut self, o: BleuStats) {
        self.hyp_len += o.hyp_len;
        self.ref_len += o.ref_len;
        for n in 0..BLEU_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

/// BLEU statistics of `hyp` against one reference (13a-tokenized).
pub fn bleu_stats(hyp: &str, reference: &str) -> BleuStats {
    let (h, r) = (tokenize_13a(hyp), tokenize_13a(reference));
    let h: Vec<&str> = h.split_whitespace().collect();
    let r: Vec<&str> = r.split_whitespace().collect();
    let mut s = BleuStats {
        hyp_len: h.len(),
        ref_len: r.len(),
        ..Default::default()
    };
    for n in 1..=BLEU_ORDER {
        let refs = word_ngrams(&r, n);
        for (g, c) in word_ngrams(&h, n) {
            s.total[n - 1] += c;
            s.correct[n - 1] += c.min(refs.get(&g).copied().unwrap_or(0));
        }
    }
    s
}

/// BLEU (0–100) from summed statistics: sacrebleu's `compute_bleu` with
/// `exp` smoothing; `effective_order` for sentence-level scores.
pub fn bleu_score(s: &BleuStats, effective_order: bool) -> f64 {
    if s.correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let bp = if s.hyp_len < s.ref_len {
        if s.hyp_len > 0 {
            (1.0 - s.ref_len as f64 / s.hyp_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0f64; BLEU_ORDER];
    let mut smooth = 1.0;
    let mut eff_order = BLEU_ORDER;
    for (n, p) in precisions.iter_mut().enumerate() {
        let (correct, total) = (s.correct[n], s.total[n]);
        if total == 0 {
            break;
        }
        if effective_order {
            eff_order = n + 1;
        }
        *p = if correct == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total as f64)
        } else {
            100.0 * correct as f64 / total as f64
        };
    }
    // sacrebleu's my_log floors log(0) at -9999999999.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let sum: f64 = precisions[..eff_order].iter().map(|&p| log(p)).sum();
    bp * (sum / eff_order as f64).exp()
}

/// chrF's statistics: per character order, hypothesis n-grams, reference
/// n-grams and matches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChrfStats(pub [[usize; 3]; CHRF_ORDER]);

impl std::ops::AddAssign for ChrfStats {
    fn add_assign(&mut self, o: ChrfStats) {
        for n in 0..CHRF_ORDER {
            for k in 0..3 {
                self.0[n][k] += o.0[n][k];
            }
        }
    }
}

fn char_ngrams(chars: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut m = HashMap::new();
    for w in chars.windows(n) {
        *m.entry(w).or_insert(0) += 1;
    }
    m
}

/// chrF statistics of `hyp` against one reference.
pub fn chrf_stats(hyp: &str, reference: &str) -> ChrfStats {
    let strip = |s: &str| -> Vec<char> { s.split_whitespace().flat_map(str::chars).collect() };
    let (h, r) = (strip(hyp), strip(reference));
    let mut s = ChrfStats::default();
    for n in 1..=CHRF_ORDER {
        let (hg, rg) = (char_ngrams(&h, n), char_ngrams(&r, n));
        let matched = hg
            .iter()
            .map(|(g, &c)| c.min(rg.get(g).copied().unwrap_or(0)))
            .sum();
        s.0[n - 1] = [hg.values().sum(), rg.values().sum(), matched];
    }
    s
}

/// chrF (0–100) from summed statistics: sacrebleu's `_compute_f_score`
/// (precision and recall averaged over the orders both sides have, then
/// the F-β of the averages).
pub fn chrf_score(s: &ChrfStats) -> f64 {
    let factor = CHRF_BETA * CHRF_BETA;
    let (mut avg_p, mut avg_r, mut eff) = (0.0, 0.0, 0usize);
    for &[n_hyp, n_ref, n_match] in &s.0 {
        if n_hyp > 0 && n_ref > 0 {
            avg_p += n_match as f64 / n_hyp as f64;
            avg_r += n_match as f64 / n_ref as f64;
            eff += 1;
        }
    }
    if eff == 0 {
        return 0.0;
    }
    avg_p /= eff as f64;
    avg_r /= eff as f64;
    if avg_p + avg_r == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + factor) * avg_p * avg_r / (factor * avg_p + avg_r)
}

/// rouge-score's default tokenizer without stemming.
fn rouge_tokens(s: &str) -> Vec<String> {
    let lower = s.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// ROUGE-L F-measure (0–1) of `hyp` against `reference`.
pub fn rouge_l(hyp: &str, reference: &str) -> f64 {
    let (r, h) = (rouge_tokens(reference), rouge_tokens(hyp));
    if r.is_empty() || h.is_empty() {
        return 0.0;
    }
    // The LCS length, one row of the table at a time.
    let mut prev = vec![0usize; h.len() + 1];
    for rt in &r {
        let mut row = vec![0usize; h.len() + 1];
        for (j, ht) in h.iter().enumerate() {
            row[j + 1] = if rt == ht {
                prev[j] + 1
            } else {
                prev[j + 1].max(row[j])
            };
        }
        prev = row;
    }
    let lcs = prev[h.len()] as f64;
    let (p, rc) = (lcs / h.len() as f64, lcs / r.len() as f64);
    if p + rc > 0.0 {
        2.0 * p * rc / (p + rc)
    } else {
        0.0
    }
}

/// Exact match after trimming and collapsing whitespace (1 or 0).
pub fn exact(hyp: &str, reference: &str) -> f64 {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    f64::from(u8::from(norm(hyp) == norm(reference)))
}

/// Whether the answer contains the reference, ignoring case and runs of
/// whitespace (1 or 0): "Paris" is in "The capital is Paris."
pub fn contains(hyp: &str, reference: &str) -> f64 {
    let norm = |s: &str| {
        s.to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    f64::from(u8::from(norm(hyp).contains(&norm(reference))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_13a_tokenizer_splits_as_mteval_does() {
        assert_eq!(tokenize_13a("Hello, world."), "Hello , world .");
        assert_eq!(
            tokenize_13a("It costs $3.50, ok?"),
            "It costs $ 3.50 , ok ?"
        );
        assert_eq!(tokenize_13a("1990-2000 &amp; more"), "1990 - 2000 & more");
        assert_eq!(tokenize_13a("don't"), "don't");
    }

    #[test]
    fn identical_sentences_score_full_marks() {
        let s = "The cat sat on the mat today.";
        assert!((bleu_score(&bleu_stats(s, s), false) - 100.0).abs() < 1e-9);
        assert!((chrf_score(&chrf_stats(s, s)) - 100.0).abs() < 1e-9);
        assert!((rouge_l(s, s) - 1.0).abs() < 1e-12);
        assert_eq!(bleu_score(&bleu_stats("x", "y"), false), 0.0);
        assert_eq!(rouge_l("", s), 0.0);
    }

    #[test]
    fn exact_and_contains_ignore_spacing() {
        assert_eq!(exact(" Paris \n", "Paris"), 1.0);
        assert_eq!(exact("paris", "Paris"), 0.0);
        assert_eq!(contains("The capital is PARIS.", "Paris"), 1.0);
        assert_eq!(contains("Lyon", "Paris"), 0.0);
    }
}
