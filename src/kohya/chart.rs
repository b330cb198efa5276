//! The loss curve of a run: a few lines of text for the terminal, and an
//! SVG written beside the checkpoints.

use std::fmt::Write;

/// A text chart of `points` (step, loss), `width` columns by `height` rows,
/// with the loss range on the left and the step range below.
pub fn terminal(points: &[(u64, f64)], width: usize, height: usize) -> String {
    let points: Vec<(u64, f64)> = points
        .iter()
        .copied()
        .filter(|(_, l)| l.is_finite())
        .collect();
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return String::from("(no loss recorded)\n");
    };
    let (lo, hi) = range(&points);
    let span_steps = (last.0 - first.0).max(1) as f64;
    let mut grid = vec![vec![' '; width]; height];
    for (step, loss) in &points {
        let x = (((step - first.0) as f64 / span_steps) * (width - 1) as f64).round() as usize;
        let y = if hi > lo {
            (((hi - loss) / (hi - lo)) * (height - 1) as f64).round() as usize
        } else {
            height / 2
        };
        grid[y.min(height - 1)][x.min(width - 1)] = '•';
    }
    let mut out = String::new();
    for (i, row) in grid.iter().enumerate() {
        let label = match i {
            0 => format!("{hi:>8.4}"),
            i if i == height - 1 => format!("{lo:>8.4}"),
            _ => " ".repeat(8),
        };
        let _ = writeln!(out, "{label} │{}", row.iter().collect::<String>());
    }
    let _ = writeln!(out, "{} └{}", " ".repeat(8), "─".repeat(width));
    let left = format!("step {}", first.0);
    let right = format!("{}", last.0);
    let gap = width.saturating_sub(left.len() + right.len());
    let _ = writeln!(out, "{}  {left}{}{right}", " ".repeat(8), " ".repeat(gap));
    out
}

fn range(points: &[(u64, f64)]) -> (f64, f64) {
    points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, l)| {
            (lo.min(*l), hi.max(*l))
        })
}

/// An SVG line chart of `points`, with `marked` (the selected checkpoint's
/// step) drawn as a dot.
pub fn svg(title: &str, points: &[(u64, f64)], marked: Option<u64>) -> String {
    const W: f64 = 640.0;
    const H: f64 = 320.0;
    const PAD: f64 = 48.0;
    let points: Vec<(u64, f64)> = points
        .iter()
        .copied()
        .filter(|(_, l)| l.is_finite())
        .collect();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{PAD}\" y=\"20\">{}</text>\n",
        escape(title)
    );
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let (lo, hi) = range(&points);
        let span_steps = (last.0 - first.0).max(1) as f64;
        let span_loss = if hi > lo { hi - lo } else { 1.0 };
        let x = |s: u64| PAD + (s - first.0) as f64 / span_steps * (W - 2.0 * PAD);
        let y = |l: f64| H - PAD - (l - lo) / span_loss * (H - 2.0 * PAD);
        let line: Vec<String> = points
            .iter()
            .map(|(s, l)| format!("{:.1},{:.1}", x(*s), y(*l)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>",
            line.join(" ")
        );
        let _ = writeln!(
            out,
            "<line x1=\"{PAD}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n<line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{0}\" stroke=\"black\"/>",
            H - PAD,
            W - PAD
        );
        let _ = writeln!(
            out,
            "<text x=\"{PAD}\" y=\"{}\">step {}</text>",
            H - PAD + 16.0,
            first.0
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            W - PAD,
            H - PAD + 16.0,
            last.0
        );
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{PAD}\">{hi:.4}</text>\n<text x=\"4\" y=\"{}\">{lo:.4}</text>",
            H - PAD
        );
        if let Some((s, l)) = marked.and_then(|m| points.iter().find(|(s, _)| *s == m)) {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#d62728\"/><text x=\"{:.1}\" y=\"{:.1}\">selected: step {s}</text>",
                x(*s),
                y(*l),
                x(*s) + 6.0,
                y(*l) - 6.0
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_every_point_and_mark_the_selection() {
        let points = [(1, 0.5), (2, 0.25), (3, f64::NAN), (4, 0.3)];
        let text = terminal(&points, 20, 5);
        assert_eq!(text.matches('•').count(), 3);
        assert!(text.contains("0.5000") && text.contains("0.2500"));
        let svg = svg("x <loss>", &points, Some(2));
        assert!(svg.contains("selected: step 2"));
        assert!(svg.contains("x &lt;loss&gt;"));
        assert_eq!(terminal(&[], 10, 3), "(no loss recorded)\n");
    }
}
