//! `loss.svg` beside the adapter: the run's training and validation loss and
//! its learning rate against the step, redrawn from `log.jsonl` at every
//! checkpoint. The log is the record (a resumed run appends to it, and a step
//! it repeats replaces the earlier entry); the picture is drawn from it so
//! it always shows the whole run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::chart::{self, ChartError, Series};

/// The curves in a training log: per step, the training loss and the
/// learning rate; the validation losses. Unreadable lines are skipped.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Curves {
    pub(crate) train: Vec<(f64, f64)>,
    pub(crate) lr: Vec<(f64, f64)>,
    pub(crate) val: Vec<(f64, f64)>,
}

pub(crate) fn read_log(text: &str) -> Curves {
    let mut steps = BTreeMap::new();
    let mut val = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_u64();
        match (v["event"].as_str(), step) {
            (Some("step"), Some(s)) => {
                if let (Some(l), Some(lr)) = (v["loss"].as_f64(), v["lr"].as_f64()) {
                    steps.insert(s, (l, lr));
                }
            }
            (Some("val"), Some(s)) => {
                if let Some(l) = v["val_loss"].as_f64() {
                    val.insert(s, l);
                }
            }
            _ => {}
        }
    }
    Curves {
        train: steps.iter().map(|(&s, &(l, _))| (s as f64, l)).collect(),
        lr: steps.iter().map(|(&s, &(_, lr))| (s as f64, lr)).collect(),
        val: val.into_iter().map(|(s, l)| (s as f64, l)).collect(),
    }
}

/// Draw `log` as `out`.
///
/// Errors: `ChartError::Read` when the log cannot be read, else the chart's.
pub(crate) fn write_loss_svg(log: &Path, out: &Path, title: &str) -> Result<(), ChartError> {
    let text = std::fs::read_to_string(log).map_err(|source| ChartError::Read {
        path: log.to_path_buf(),
        source,
    })?;
    let c = read_log(&text);
    let mut series = vec![Series {
        name: "training loss",
        points: &c.train,
    }];
    if !c.val.is_empty() {
        series.push(Series {
            name: "validation loss",
            points: &c.val,
        });
    }
    chart::loss_curve(out, title, &series, &c.lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_step_replaces_the_earlier_one() {
        let log = r#"{"event":"start","step":0}
{"event":"val","step":0,"val_loss":3.0}
{"event":"step","step":1,"loss":2.5,"lr":0.001}
{"event":"step","step":2,"loss":2.0,"lr":0.002}
not json
{"event":"resume","step":1}
{"event":"step","step":2,"loss":1.9,"lr":0.002}
{"event":"val","step":2,"val_loss":2.2}"#;
        let c = read_log(log);
        assert_eq!(c.train, vec![(1.0, 2.5), (2.0, 1.9)]);
        assert_eq!(c.lr, vec![(1.0, 0.001), (2.0, 0.002)]);
        assert_eq!(c.val, vec![(0.0, 3.0), (2.0, 2.2)]);
    }
}
