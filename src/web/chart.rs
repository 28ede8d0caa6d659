//! The overview's hourly chart: stacked bars as an inline SVG, drawn here so the
//! page needs no script and no chart library.

use std::fmt::Write;

/// One hour's bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bar {
    /// Unix hour.
    pub hour: i64,
    pub delivered: i64,
    pub deferred: i64,
    pub bounced: i64,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 20.0;
const SERIES: [(&str, &str); 3] = [
    ("Delivered", "#17794a"),
    ("Deferred", "#d18f00"),
    ("Bounced", "#b3261e"),
];

/// The SVG of `bars` (oldest first), with a text summary for screen readers.
pub fn hourly(bars: &[Bar]) -> String {
    let top = bars
        .iter()
        .map(|b| b.delivered + b.deferred + b.bounced)
        .max()
        .unwrap_or(0)
        .max(1);
    let totals: [i64; 3] = [
        bars.iter().map(|b| b.delivered).sum(),
        bars.iter().map(|b| b.deferred).sum(),
        bars.iter().map(|b| b.bounced).sum(),
    ];
    let summary = format!(
        "Delivery attempts per hour over {} hour(s): {} delivered, {} deferred, {} bounced",
        bars.len(),
        totals[0],
        totals[1],
        totals[2]
    );
    let mut svg = format!(
        r##"<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{summary}" xmlns="http://www.w3.org/2000/svg"><title>{summary}</title>"##
    );
    let plot_h = HEIGHT - BOTTOM - 8.0;
    let base = HEIGHT - BOTTOM;
    for (value, y) in [(top, base - plot_h), (0, base)] {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{WIDTH}" y1="{y:.1}" y2="{y:.1}" stroke="#e1e4ea"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#5b6473">{value}</text>"##,
            LEFT - 4.0,
            y + 3.0
        );
    }
    let n = bars.len().max(1) as f64;
    let slot = (WIDTH - LEFT) / n;
    let bar_w = (slot * 0.75).max(1.0);
    for (i, bar) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar_w) / 2.0;
        let mut y = base;
        for ((label, color), value) in SERIES
            .iter()
            .zip([bar.delivered, bar.deferred, bar.bounced])
        {
            if value == 0 {
                continue;
            }
            let h = plot_h * value as f64 / top as f64;
            y -= h;
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{color}"><title>{} {label}: {value}</title></rect>"##,
                hour_label(bar.hour)
            );
        }
    }
    // A time label every few bars, so they do not overlap.
    let every = (bars.len() / 8).max(1);
    for (i, bar) in bars.iter().enumerate().step_by(every) {
        let x = LEFT + slot * (i as f64 + 0.5);
        let _ = write!(
            svg,
            r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#5b6473">{}</text>"##,
            HEIGHT - 6.0,
            hour_label(bar.hour)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn hour_label(hour: i64) -> String {
    chrono::DateTime::from_timestamp(hour * 3600, 0)
        .map(|t| t.format("%d %H:00").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_to_the_tallest() {
        let bars = [
            Bar {
                hour: 10,
                delivered: 10,
                deferred: 0,
                bounced: 0,
            },
            Bar {
                hour: 11,
                delivered: 2,
                deferred: 1,
                bounced: 2,
            },
        ];
        let svg = hourly(&bars);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("12 delivered, 1 deferred, 2 bounced"));
        // The tallest bar fills the plot (152 px); the others are in proportion.
        assert!(svg.contains(r##"height="152.0" fill="#17794a""##), "{svg}");
        assert!(svg.contains(r##"height="15.2" fill="#d18f00""##), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 4);
    }

    #[test]
    fn no_data_draws_an_empty_chart() {
        let svg = hourly(&[Bar {
            hour: 1,
            ..Bar::default()
        }]);
        assert_eq!(svg.matches("<rect").count(), 0);
        assert!(svg.contains("0 delivered"));
    }
}
