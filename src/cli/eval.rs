//! `ferrite eval`: score greedy answers against held-out chats, for the base
//! model, an adapter, or both side by side (`--compare`).

use std::io::Write;

use ferrite::eval::{self, EvalOptions, Metric, Report};

use super::args::EvalArgs;
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, a: EvalArgs, out: &mut Out) -> anyhow::Result<()> {
    let metrics = Metric::parse_list(&a.metrics)?;
    let examples = eval::load_examples(&a.data)?;
    if let Some(path) = &a.chart {
        // Checked before minutes of answering, not after.
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            anyhow::bail!(
                "--chart {}: the folder {} does not exist",
                path.display(),
                dir.display()
            );
        }
    }
    let mut engine = ctx.load(&a.model)?;
    let adapter = a
        .lora
        .as_ref()
        .or(a.compare.as_ref())
        .map(|l| ctx.load_lora(&mut engine, l))
        .transpose()?;
    let mut sess = engine.session(ctx.session_opts(&a.model, 0))?;
    let opts = EvalOptions {
        metrics,
        n_predict: a.n_predict as usize,
    };
    let bars = super::progress::Bars::default();
    let mut runs: Vec<(String, Report)> = Vec::new();
    if a.compare.is_some() {
        sess.set_adapter(None)?;
        runs.push((
            "base".into(),
            eval::evaluate(&mut sess, &a.data, &examples, &opts, &bars)?,
        ));
    }
    sess.set_adapter(adapter)?;
    let label = match (&a.lora, &a.compare) {
        (Some(l), _) | (None, Some(l)) => l.clone(),
        (None, None) => "base".into(),
    };
    runs.push((
        label,
        eval::evaluate(&mut sess, &a.data, &examples, &opts, &bars)?,
    ));
    if a.json {
        let v = match runs.as_slice() {
            [(_, r)] => serde_json::to_value(r)?,
            [(_, base), (name, with)] => serde_json::json!({
                "base": base,
                "adapter": name,
                "with_adapter": with,
                "change": change(base, with),
            }),
            _ => unreachable!("one run, or base and adapter"),
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        print_table(out, &runs, examples.len())?;
    }
    // After the scores are out: a chart that cannot be written loses none.
    if let Some(path) = &a.chart {
        draw_chart(path, &a.data, &runs)?;
    }
    Ok(())
}

/// One evaluation of `data` for `finetune --eval-data`: the model at `path`
/// loaded whole (the trainer's own copy is vocabulary only), with the
/// adapter file `adapter` if given, greedy answers of at most 128 tokens,
/// the default metrics.
pub(crate) fn for_finetune(
    ctx: &Ctx,
    (name, path, sha): (&str, &std::path::Path, &str),
    adapter: Option<&std::path::Path>,
    data: &std::path::Path,
) -> anyhow::Result<Report> {
    let examples = eval::load_examples(data)?;
    let mut engine = ferrite::llm::Engine::load(name, path, &Default::default())?;
    let id = adapter
        .map(|p| engine.load_adapter("trained", p, Some(sha)))
        .transpose()?;
    let mut sess = engine.session(ferrite::llm::SessionOptions {
        ctx_tokens: ctx.board.ctx_tokens,
        threads: ctx.board.threads(),
        ..Default::default()
    })?;
    sess.set_adapter(id.map(|i| (i, 1.0)))?;
    let opts = EvalOptions {
        metrics: Metric::parse_list(Metric::DEFAULT)?,
        n_predict: 128,
    };
    let bars = super::progress::Bars::default();
    Ok(eval::evaluate(&mut sess, data, &examples, &opts, &bars)?)
}

/// One panel per metric, one bar per run, written to `path`.
fn draw_chart(
    path: &std::path::Path,
    data: &std::path::Path,
    runs: &[(String, Report)],
) -> anyhow::Result<()> {
    let panels: Vec<(String, Vec<(String, f64)>)> = runs[0]
        .1
        .corpus
        .iter()
        .map(|&(m, _)| {
            let bars = runs
                .iter()
                .map(|(n, r)| (n.clone(), r.get(m).unwrap_or(f64::NAN)));
            (m.name().to_string(), bars.collect())
        })
        .collect();
    let title = format!("ferrite eval: {}", data.display());
    ferrite::chart::bar_panels(path, &title, &panels)?;
    Ok(())
}

/// Adapter minus base, per metric.
fn change(base: &Report, with: &Report) -> serde_json::Map<String, serde_json::Value> {
    base.corpus
        .iter()
        .filter_map(|&(m, b)| Some((m.name().to_string(), (with.get(m)? - b).into())))
        .collect()
}

fn fmt(m: Metric, v: f64) -> String {
    match m {
        Metric::Bleu | Metric::Chrf => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

pub(crate) fn print_table(
    out: &mut dyn Write,
    runs: &[(String, Report)],
    n: usize,
) -> anyhow::Result<()> {
    let names: Vec<&str> = runs.iter().map(|(n, _)| n.as_str()).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(4).max(8);
    let mut head = format!("{:<11}", "metric");
    for n in &names {
        head.push_str(&format!(" {n:>width$}"));
    }
    if runs.len() == 2 {
        head.push_str(&format!(" {:>9}", "change"));
    }
    writeln!(out, "{head}")?;
    for &(m, v) in &runs[0].1.corpus {
        let mut line = format!("{:<11}", m.name());
        line.push_str(&format!(" {:>width$}", fmt(m, v)));
        if let Some((_, with)) = runs.get(1) {
            let w = with.get(m).unwrap_or(f64::NAN);
            let d = w - v;
            let better = if d == 0.0 {
                ""
            } else if (d > 0.0) == m.higher_is_better() {
                " better"
            } else {
                " worse"
            };
            line.push_str(&format!(" {:>width$} {:>+9.3}{better}", fmt(m, w), d));
        }
        writeln!(out, "{line}")?;
    }
    let secs: f64 = runs.iter().map(|(_, r)| r.seconds).sum();
    let labels = runs[0]
        .1
        .labels
        .as_ref()
        .map(|l| format!("; answers held to the labels {}", l.join(", ")))
        .unwrap_or_default();
    let has = |m| runs[0].1.get(m).is_some();
    let mut scales = Vec::new();
    if has(Metric::Bleu) || has(Metric::Chrf) {
        scales.push("bleu and chrf 0-100 as sacrebleu");
    }
    if has(Metric::RougeL) {
        scales.push("rouge-l 0-1 as rouge-score");
    }
    if has(Metric::Perplexity) {
        scales.push("perplexity of the references (lower is better)");
    }
    let scales = if scales.is_empty() {
        String::new()
    } else {
        format!("; {}", scales.join(", "))
    };
    writeln!(
        out,
        "{n} examples, greedy answers, {secs:.1} s{labels}{scales}"
    )?;
    Ok(())
}
