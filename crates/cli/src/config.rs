//! The run config: one typed TOML file, unknown keys rejected, every default
//! documented in `configs/eval.toml`, and `--set key=value` overrides.

use std::path::{Path, PathBuf};

use llmrec_baselines::BaselinesConfig;
use llmrec_core::{Error, EvalConfig, Result};
use llmrec_data::loaders::{Column, GenericSpec, ItemTextSpec, load_generic};
use llmrec_data::preprocess::PreprocessConfig;
use serde::{Deserialize, Serialize};

/// A complete, resolved run configuration. It is written into every run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalRunConfig {
    /// Seed of every stochastic step of the models.
    pub seed: u64,
    /// Which data, and how it is preprocessed.
    pub dataset: DatasetConfig,
    /// How interactions are split.
    pub split: SplitConfig,
    /// Evaluation protocol and cutoffs.
    pub eval: EvalConfig,
    /// Models to evaluate when `--model` is not given.
    pub run_models: Vec<String>,
    /// Hyperparameters of every model.
    pub models: BaselinesConfig,
}

impl Default for EvalRunConfig {
    fn default() -> Self {
        EvalRunConfig {
            seed: 42,
            dataset: DatasetConfig::default(),
            split: SplitConfig::default(),
            eval: EvalConfig::default(),
            run_models: vec![
                "mostpop".into(),
                "itemknn".into(),
                "bpr".into(),
                "ease".into(),
            ],
            models: BaselinesConfig::default(),
        }
    }
}

/// Dataset section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetConfig {
    /// Registered dataset name, or the name of your own data when `generic` is set.
    pub name: String,
    /// Your own data, read by the generic loader instead of the registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generic: Option<GenericConfig>,
    /// Preprocessing applied after loading (defaults change nothing).
    pub preprocess: PreprocessConfig,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            name: "ml-1m-sas".into(),
            generic: None,
            preprocess: PreprocessConfig::default(),
        }
    }
}

/// A column given by header name or 0-based index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnConfig {
    /// 0-based index.
    Index(usize),
    /// Header name.
    Name(String),
}

impl ColumnConfig {
    fn to_column(&self) -> Column {
        match self {
            ColumnConfig::Index(i) => Column::Index(*i),
            ColumnConfig::Name(n) => Column::Name(n.clone()),
        }
    }
}

/// `[dataset.generic]`: a CSV/TSV of interactions, and optional item text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericConfig {
    /// Interaction file (plain or gzip).
    pub path: PathBuf,
    /// One-character delimiter, or "tab"; absent: by extension, else sniffed.
    #[serde(default)]
    pub delimiter: Option<String>,
    /// Whether the first line is a header.
    #[serde(default)]
    pub header: bool,
    /// User column (name or index). Default 0.
    #[serde(default = "col0")]
    pub user: ColumnConfig,
    /// Item column (name or index). Default 1.
    #[serde(default = "col1")]
    pub item: ColumnConfig,
    /// Rating column, if any.
    #[serde(default)]
    pub rating: Option<ColumnConfig>,
    /// Timestamp column, if any (without it, file order is time order).
    #[serde(default)]
    pub timestamp: Option<ColumnConfig>,
    /// Item text as JSON Lines (`{"item": .., "title": .., "categories": [..], "brand": ..}`).
    #[serde(default)]
    pub item_text_jsonl: Option<PathBuf>,
}

fn col0() -> ColumnConfig {
    ColumnConfig::Index(0)
}

fn col1() -> ColumnConfig {
    ColumnConfig::Index(1)
}

impl GenericConfig {
    /// Loads the data as dataset `name`.
    pub fn load(&self, name: &str) -> Result<llmrec_core::Dataset> {
        let delimiter = match self.delimiter.as_deref() {
            None => None,
            Some("tab") | Some("\\t") | Some("\t") => Some(b'\t'),
            Some(d) if d.len() == 1 => Some(d.as_bytes()[0]),
            Some(d) => {
                return Err(Error::config(
                    "dataset.generic.delimiter",
                    format!("expected one character or \"tab\", got `{d}`"),
                ));
            }
        };
        let spec = GenericSpec {
            path: self.path.clone(),
            delimiter,
            has_header: self.header,
            user_col: self.user.to_column(),
            item_col: self.item.to_column(),
            rating_col: self.rating.as_ref().map(ColumnConfig::to_column),
            timestamp_col: self.timestamp.as_ref().map(ColumnConfig::to_column),
        };
        let text = self.item_text_jsonl.clone().map(ItemTextSpec::Jsonl);
        load_generic(name, &spec, text.as_ref())
    }
}

/// Split section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Only `leave-one-out` is used for ranking evaluation.
    pub kind: String,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            kind: "leave-one-out".into(),
        }
    }
}

impl EvalRunConfig {
    /// Reads `path` (if any), applies `overrides` (`a.b.c=value`), and validates.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let cfg: EvalRunConfig = load_toml(path, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<()> {
        self.eval.validate()?;
        self.models.validate()?;
        if self.split.kind != "leave-one-out" {
            return Err(Error::config(
                "split.kind",
                format!(
                    "expected `leave-one-out` for ranking evaluation, got `{}`",
                    self.split.kind
                ),
            ));
        }
        Ok(())
    }

    /// The resolved config as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::config("(all)", e.to_string()))
    }
}

/// Reads a typed TOML config from `path` (defaults when `None`), then applies
/// `--set` overrides. Unknown keys, NaN and infinities are errors naming the
/// file and line or the dotted field.
pub fn load_toml<T: serde::de::DeserializeOwned>(
    path: Option<&Path>,
    overrides: &[String],
) -> Result<T> {
    let mut table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            // First pass straight from the text: errors carry line and column.
            toml::from_str::<T>(&text).map_err(|e| toml_error(p, &e))?;
            toml::from_str::<toml::Table>(&text).map_err(|e| toml_error(p, &e))?
        }
        None => toml::Table::new(),
    };
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    check_finite(&toml::Value::Table(table.clone()), "")?;
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::config("--set", e.message().to_owned()))
}

fn toml_error(path: &Path, e: &toml::de::Error) -> Error {
    let line = e
        .span()
        .and_then(|s| {
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t[..s.start.min(t.len())].matches('\n').count() + 1)
        })
        .unwrap_or(0);
    Error::parse(path, line, e.message().to_owned())
}

/// Sets `key=value` in `table`; `value` is TOML (`250`, `[5, 10]`, `"x"`) or a bare string.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| Error::config("--set", format!("expected KEY=VALUE, got `{spec}`")))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(Error::config(
            "--set",
            format!("expected a dotted key like eval.ks, got `{key}`"),
        ));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.trim().to_owned()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| Error::config(key, format!("`{p}` is a value, not a section")))?;
    }
    cur.insert(parts[parts.len() - 1].to_owned(), value);
    Ok(())
}

/// Rejects NaN and infinite numbers anywhere in the config, naming the field.
fn check_finite(v: &toml::Value, path: &str) -> Result<()> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => Err(Error::config(
            path,
            format!("expected a finite number, got {f}"),
        )),
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                check_finite(v, &p)?;
            }
            Ok(())
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                check_finite(v, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The path of `configs/NAME` in this repository, for the tests of the shipped configs.
/// `configs/sasrec.toml`: data and training settings of one SASRec run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SasRecRunConfig {
    /// Which data, and how it is preprocessed.
    pub dataset: DatasetConfig,
    /// Training settings (model, loss, optimiser, early stopping).
    pub train: llmrec_models::SasRecTrainConfig,
    /// Cutoffs of the final test evaluation.
    pub test_ks: Vec<usize>,
}

impl Default for SasRecRunConfig {
    fn default() -> Self {
        SasRecRunConfig {
            dataset: DatasetConfig::default(),
            train: llmrec_models::SasRecTrainConfig::default(),
            test_ks: vec![5, 10, 20],
        }
    }
}

#[cfg(test)]
pub(crate) fn shipped_config(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn shipped_config_equals_defaults() {
        let p = shipped_config("eval.toml");
        let cfg = EvalRunConfig::load(Some(&p), &[]).unwrap();
        assert_eq!(cfg, EvalRunConfig::default());
    }

    #[test]
    fn unknown_key_names_line() {
        let f = write("seed = 1\n\n[eval]\nkz = [5]\n");
        let e = EvalRunConfig::load(Some(f.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(":4:"), "{e}");
        assert!(e.contains("unknown field `kz`"), "{e}");
    }

    #[test]
    fn nan_is_rejected_with_field() {
        let f = write("[models.ease]\nlambda = nan\n");
        let e = EvalRunConfig::load(Some(f.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("models.ease.lambda"), "{e}");
        let e = EvalRunConfig::load(None, &["models.ease.lambda=inf".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("models.ease.lambda"), "{e}");
    }

    #[test]
    fn generic_dataset_from_config() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("events.csv");
        std::fs::write(&data, "uid,iid,ts\nu1,a,3\nu1,b,1\nu2,a,5\n").unwrap();
        let text = dir.path().join("items.jsonl");
        std::fs::write(&text, "{\"item\": \"a\", \"title\": \"Alpha\"}\n").unwrap();
        let cfg = write(&format!(
            "[dataset]\nname = \"mine\"\n[dataset.generic]\npath = {:?}\nheader = true\nuser = \"uid\"\nitem = \"iid\"\ntimestamp = 2\nitem_text_jsonl = {:?}\n",
            data, text
        ));
        let cfg = EvalRunConfig::load(Some(cfg.path()), &[]).unwrap();
        let ds = cfg.dataset.generic.as_ref().unwrap().load("mine").unwrap();
        assert_eq!(ds.n_users(), 2);
        // u1's history is time-ordered: b (t=1) before a (t=3).
        let seq: Vec<&str> = ds.sequences()[0].iter().map(|&i| ds.items.raw(i)).collect();
        assert_eq!(seq, ["b", "a"]);
        let a = ds.items.get("a").unwrap();
        assert_eq!(ds.item_text[a as usize].title, "Alpha");
    }

    #[test]
    fn overrides_apply_and_are_typed() {
        let cfg = EvalRunConfig::load(
            None,
            &[
                "eval.ks=[1, 2]".into(),
                "dataset.name=ml-100k".into(),
                "models.ease.lambda=250".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.eval.ks, vec![1, 2]);
        assert_eq!(cfg.dataset.name, "ml-100k");
        assert_eq!(cfg.models.ease.lambda, 250.0);
        assert!(EvalRunConfig::load(None, &["eval.ks".into()]).is_err());
        assert!(EvalRunConfig::load(None, &["eval.nope=1".into()]).is_err());
        assert!(EvalRunConfig::load(None, &["split.kind=random".into()]).is_err());
    }
}
