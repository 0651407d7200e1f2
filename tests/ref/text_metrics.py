"""The reference text metrics for `ferrite eval` (tests/eval.rs): sacrebleu's
BLEU and chrF and rouge-score's ROUGE-L, with their defaults. stdin is a JSON
list of [hypothesis, reference] pairs; stdout is JSON: per pair the sentence
BLEU, sentence chrF and ROUGE-L F-measure, and the corpus BLEU and chrF."""
import json
import sys

import sacrebleu
from rouge_score import rouge_scorer

pairs = json.load(sys.stdin)
hyps = [h for h, _ in pairs]
refs = [r for _, r in pairs]
scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
print(json.dumps({
    "sentence_bleu": [sacrebleu.sentence_bleu(h, [r]).score for h, r in pairs],
    "sentence_chrf": [sacrebleu.sentence_chrf(h, [r]).score for h, r in pairs],
    "rouge_l": [scorer.score(r, h)["rougeL"].fmeasure for h, r in pairs],
    "corpus_bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
    "corpus_chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
}))
