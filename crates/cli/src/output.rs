//! Output: Markdown tables, run folders, atomic writes, and process stats.

use std::path::{Path, PathBuf};

use llmrec_core::{Error, Result};

pub use llmrec_core::io::{write_atomic, write_json, write_jsonl};

/// A Markdown table.
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut s = line(header);
    let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    s.push_str(&format!("|-{}-|\n", sep.join("-|-")));
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

/// UTC time as `YYYYMMDD-HHMMSS`, for run-folder names.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A fresh run folder `out/<kind>-<dataset>-<stamp>` (suffixed if it exists).
pub fn run_dir(out: &Path, kind: &str, dataset: &str) -> Result<PathBuf> {
    let base = format!("{kind}-{dataset}-{}", utc_stamp());
    let mut dir = out.join(&base);
    let mut n = 1;
    while dir.exists() {
        dir = out.join(format!("{base}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Writes `heading` and `table` to `dir/table.md` (temp file and rename),
/// prints them, and prints where the run folder is.
pub fn publish_table(dir: &Path, heading: &str, table: &str) -> Result<()> {
    write_atomic(
        &dir.join("table.md"),
        format!("{heading}{table}").as_bytes(),
    )?;
    print!("{heading}{table}");
    println!("\nrun folder: {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let t = markdown_table(
            &["model".into(), "HR@10".into()],
            &[vec!["ease".into(), "0.1234".into()]],
        );
        assert_eq!(
            t,
            "| model | HR@10  |\n|-------|--------|\n| ease  | 0.1234 |\n"
        );
    }

    #[test]
    fn stamp_has_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 15);
        assert!(s.starts_with("20"));
    }
}
