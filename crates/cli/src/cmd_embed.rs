//! `llmrec embed` (item-text embeddings as a reusable artifact) and
//! `llmrec models` (where model weights resolve).

use std::time::Instant;

use llmrec_core::{Error, Result};
use llmrec_llm::{Cache, Embedder, embed_items, read_embeddings, write_embeddings};

use crate::args::{EmbedArgs, ModelsArgs};
use crate::output::markdown_table;
use crate::progress;

/// Runs `llmrec embed`.
pub fn run(args: &EmbedArgs) -> Result<()> {
    let ds = crate::setup::dataset_named(&args.dataset)?;
    let texts: Vec<String> = ds.item_text.iter().map(|t| t.to_text()).collect();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| crate::setup::default_embeddings_path(&ds.name));
    let embedder = Embedder::minilm(args.model.as_deref())?.with_batch_size(args.batch_size);
    if out.exists()
        && let Ok(table) = read_embeddings(&out)
        && table
            .check_matches(&out, embedder.model_id(), &texts)
            .is_ok()
    {
        println!(
            "{}: up to date ({} items x {} dims)",
            out.display(),
            table.len(),
            table.dim
        );
        return Ok(());
    }
    let cache_path = args
        .cache
        .clone()
        .unwrap_or_else(crate::setup::default_cache_path);
    if let Some(dir) = cache_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let cache = Cache::open(&cache_path)?;
    let sp = progress::spinner(&format!("embedding {} item texts", texts.len()));
    let t = Instant::now();
    let vectors = embed_items(&embedder, &texts, Some(&cache))?;
    let secs = t.elapsed().as_secs_f64();
    sp.finish_and_clear();
    write_embeddings(&out, embedder.model_id(), &texts, &vectors)?;
    println!(
        "{}: {} items x {} dims in {:.1}s ({:.0} texts/s, cache {})",
        out.display(),
        vectors.len(),
        embedder.dim(),
        secs,
        vectors.len() as f64 / secs.max(1e-9),
        cache_path.display()
    );
    Ok(())
}

/// Runs `llmrec models`.
pub fn models(_args: &ModelsArgs) -> Result<()> {
    let rows: Vec<Vec<String>> = llmrec_llm::resolve::describe()
        .into_iter()
        .map(|(m, r)| {
            vec![
                m.name.to_string(),
                m.hf_repo.to_string(),
                match r {
                    Ok(p) => p.display().to_string(),
                    Err(e) => format!("missing: {e}"),
                },
            ]
        })
        .collect();
    let header = ["model", "source", "resolved to"].map(String::from);
    print!("{}", markdown_table(&header, &rows));
    Ok(())
}
