//! The summary `ferrite models info` prints of a GGUF model.

use std::collections::BTreeMap;
use std::fmt;

use super::{ftype_name, GgmlType, GgufFile, TensorInfo, Value};

impl GgufFile {
    /// A summary for `ferrite models info`.
    pub fn summary(&self) -> ModelSummary {
        let arch = self.architecture().unwrap_or("?").to_string();
        let mut types: BTreeMap<GgmlType, usize> = BTreeMap::new();
        for t in &self.tensors {
            *types.entry(t.ggml_type).or_default() += 1;
        }
        let file_type = self.get_u64("general.file_type").map(ftype_name);
        ModelSummary {
            name: self.get_str("general.name").map(str::to_string),
            n_params: self.tensors.iter().map(TensorInfo::n_elements).sum(),
            context_length: self.get_u64(&format!("{arch}.context_length")),
            n_layers: self.get_u64(&format!("{arch}.block_count")),
            n_embd: self.get_u64(&format!("{arch}.embedding_length")),
            n_vocab: match self.get("tokenizer.ggml.tokens") {
                Some(Value::Array(_, v)) => Some(v.len() as u64),
                _ => None,
            },
            chat_template: self.get("tokenizer.chat_template").is_some(),
            tensor_types: types.into_iter().map(|(t, n)| (t.to_string(), n)).collect(),
            file_type: file_type.map(str::to_string),
            file_size: self.map.len() as u64,
            version: self.version,
            arch,
        }
    }
}

/// What `ferrite models info` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSummary {
    pub arch: String,
    pub name: Option<String>,
    pub n_params: u64,
    pub file_type: Option<String>,
    pub context_length: Option<u64>,
    pub n_layers: Option<u64>,
    pub n_embd: Option<u64>,
    pub n_vocab: Option<u64>,
    pub chat_template: bool,
    pub tensor_types: Vec<(String, usize)>,
    pub file_size: u64,
    pub version: u32,
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        writeln!(f, "architecture:   {}", self.arch)?;
        if let Some(n) = &self.name {
            writeln!(f, "name:           {n}")?;
        }
        writeln!(
            f,
            "parameters:     {} ({:.1} M)",
            self.n_params,
            self.n_params as f64 / 1e6
        )?;
        writeln!(
            f,
            "file type:      {}",
            self.file_type.as_deref().unwrap_or("?")
        )?;
        let types: Vec<String> = self
            .tensor_types
            .iter()
            .map(|(t, n)| format!("{t}×{n}"))
            .collect();
        writeln!(f, "tensor types:   {}", types.join(", "))?;
        writeln!(f, "context length: {}", opt(self.context_length))?;
        writeln!(f, "layers:         {}", opt(self.n_layers))?;
        writeln!(f, "embedding:      {}", opt(self.n_embd))?;
        writeln!(f, "vocabulary:     {}", opt(self.n_vocab))?;
        writeln!(
            f,
            "chat template:  {}",
            if self.chat_template {
                "yes"
            } else {
                "no (prompts are completed as plain text)"
            }
        )?;
        write!(
            f,
            "file:           {} bytes, GGUF v{}",
            self.file_size, self.version
        )
    }
}
