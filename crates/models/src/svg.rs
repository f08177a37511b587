//! A tiny hand-written SVG line plot (no plotting crate).

use std::fmt::Write;

/// A line plot of `points` (x, y) with a title and axis labels, as an SVG document.
pub(crate) fn line_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
) -> String {
    let (w, h) = (480.0, 300.0);
    let (left, right, top, bottom) = (60.0, 20.0, 30.0, 45.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &finite {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if finite.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.01;
        y1 += 0.01;
    }
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="13">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<path d="M{left} {top} V{} H{}" fill="none" stroke="black"/>"#,
        top + ph,
        left + pw
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let yv = y0 + f * (y1 - y0);
        let yp = sy(yv);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yp:.1}" x2="{}" y2="{yp:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{yv:.4}</text>"##,
            left + pw,
            left - 4.0,
            yp + 4.0
        );
        let xv = x0 + f * (x1 - x0);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{xv:.0}</text>"#,
            sx(xv),
            top + ph + 15.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 8.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    if !finite.is_empty() {
        let pts: Vec<String> = finite
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
            pts.join(" ")
        );
        for &(x, y) in &finite {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="#1f77b4"/>"##,
                sx(x),
                sy(y)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn plot_is_well_formed() {
        let s = super::line_plot("a<b", "epoch", "NDCG@10", &[(1.0, 0.1), (2.0, 0.2)]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("a&lt;b") && s.contains("<polyline"));
        let empty = super::line_plot("t", "x", "y", &[]);
        assert!(!empty.contains("<polyline"));
    }
}
