//! Hand-written SVG line charts for run folders (no plotting dependency).

use std::fmt::Write;

/// One named series of `(x, y)` points.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// Points; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG document plotting every series on shared axes, with a legend.
pub fn chart(title: &str, x_label: &str, series: &[Series<'_>]) -> String {
    let (w, h, l, r, t, b) = (560.0, 320.0, 64.0, 130.0, 30.0, 40.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| t + ph - (y - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="{w}" height="{h}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="13">{}</text>"#,
        l + pw / 2.0,
        esc(title)
    );
    for i in 0..=4 {
        let yv = y0 + (y1 - y0) * i as f64 / 4.0;
        let (x2, yp, xt) = (l + pw, sy(yv), l - 4.0);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" x2="{x2}" y1="{yp:.1}" y2="{yp:.1}" stroke="#ddd"/><text x="{xt}" y="{:.1}" text-anchor="end">{yv:.4}</text>"##,
            yp + 4.0
        );
        let xv = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{xv:.0}</text>"#,
            sx(xv),
            t + ph + 14.0
        );
    }
    let _ = writeln!(
        s,
        r#"<path d="M{l} {t} V{} H{}" fill="none" stroke="black"/><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        t + ph,
        l + pw,
        l + pw / 2.0,
        h - 6.0,
        esc(x_label)
    );
    for (k, se) in series.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let d: Vec<String> = se
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .enumerate()
            .map(|(i, &(x, y))| {
                format!(
                    "{}{:.1} {:.1}",
                    if i == 0 { "M" } else { "L" },
                    sx(x),
                    sy(y)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<path d="{}" fill="none" stroke="{c}" stroke-width="1.5"/><text x="{}" y="{}" fill="{c}">{}</text>"#,
            d.join(" "),
            l + pw + 8.0,
            t + 12.0 + 14.0 * k as f64,
            esc(se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn chart_is_svg() {
        let s = super::chart(
            "t<1>",
            "epoch",
            &[super::Series {
                name: "a",
                points: vec![(1.0, 0.5), (2.0, f64::NAN), (3.0, 0.7)],
            }],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("t&lt;1&gt;"));
    }
}
