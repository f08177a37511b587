//! `llmrec datasets`: registered datasets and their statistics.

use std::time::Instant;

use llmrec_core::{DatasetStats, Result};
use serde::Serialize;

use crate::args::DatasetsArgs;
use crate::output::markdown_table;

#[derive(Serialize)]
struct Row {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<DatasetStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unavailable: Option<String>,
    load_seconds: f64,
}

/// Loads each dataset and prints its statistics; a dataset that cannot be
/// loaded is listed with the reason.
pub fn run(args: &DatasetsArgs) -> Result<()> {
    let names: Vec<String> = if args.name.is_empty() {
        llmrec_data::dataset_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.name.clone()
    };
    let mut rows = Vec::new();
    for name in &names {
        let t = Instant::now();
        let (stats, unavailable) = match llmrec_data::load(name) {
            Ok(ds) => (Some(ds.stats()), None),
            Err(e @ llmrec_core::Error::UnknownDataset { .. }) => return Err(e),
            Err(e) => (None, Some(e.to_string())),
        };
        rows.push(Row {
            name: name.clone(),
            stats,
            unavailable,
            load_seconds: t.elapsed().as_secs_f64(),
        });
    }
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| llmrec_core::Error::Invalid(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    let header: Vec<String> = [
        "dataset",
        "users",
        "items",
        "interactions",
        "density",
        "len min/p25/p50/p75/p90/p99/max",
        "mean len",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut table_rows = Vec::new();
    let mut notes = Vec::new();
    for r in &rows {
        match &r.stats {
            Some(s) => {
                let l = &s.seq_len;
                table_rows.push(vec![
                    r.name.clone(),
                    s.users.to_string(),
                    s.items.to_string(),
                    s.interactions.to_string(),
                    format!("{:.4}%", s.density * 100.0),
                    format!(
                        "{}/{}/{}/{}/{}/{}/{}",
                        l.min, l.p25, l.p50, l.p75, l.p90, l.p99, l.max
                    ),
                    format!("{:.1}", l.mean),
                ]);
            }
            None => {
                let mut row = vec![r.name.clone(), "unavailable (see below)".into()];
                row.resize(header.len(), String::new());
                table_rows.push(row);
                notes.push(format!(
                    "- {}: {}",
                    r.name,
                    r.unavailable.as_deref().unwrap_or("")
                ));
            }
        }
    }
    print!("{}", markdown_table(&header, &table_rows));
    if !notes.is_empty() {
        println!();
        for n in notes {
            println!("{n}");
        }
    }
    Ok(())
}
