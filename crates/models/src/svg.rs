//! SVG plots for run folders, through [`llmrec_core::plot`].

/// A line plot of `points` (x, y) with a title and axis labels, as an SVG document.
pub(crate) fn line_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
) -> String {
    llmrec_core::plot::chart(
        title,
        x_label,
        &[llmrec_core::plot::Series {
            name: y_label,
            points: points.to_vec(),
        }],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn plot_is_well_formed() {
        let s = super::line_plot("a<b", "epoch", "NDCG@10", &[(1.0, 0.1), (2.0, 0.2)]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("a&lt;b") && s.contains("stroke-width=\"1.5\""));
        assert!(s.contains("NDCG@10"));
    }
}
