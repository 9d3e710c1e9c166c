//! Charts as inline SVG, so a report is one self-contained HTML file: no JavaScript, no CDN,
//! readable offline and in a CI artifact viewer.
//!
//! Three kinds: a line chart of several series (hit ratio over time), grouped bars (a figure per
//! node and variant) and a latency CDF built from HDR histograms (drawn as a line chart with a log-scaled x axis when the
//! latencies span more than two decades, where a linear axis would squash the body into one
//! pixel column).

use std::fmt::Write;

use hdrhistogram::Histogram;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points (x, y), in drawing order; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// Index of its colour in the palette; `None`: its position among the chart's series. A
    /// report whose charts show different subsets of its variants sets it, so that a variant
    /// keeps one colour in every chart.
    pub colour: Option<usize>,
}

impl Series {
    /// A named series.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, colour: None }
    }

    /// The same series drawn in palette colour `index` (modulo the palette's length).
    pub fn with_colour(mut self, index: usize) -> Self {
        self.colour = Some(index);
        self
    }

    fn colour_at(&self, position: usize) -> &'static str {
        PALETTE[self.colour.unwrap_or(position) % PALETTE.len()]
    }
}

/// How an axis maps values to pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Evenly spaced values.
    Linear,
    /// Evenly spaced decades (values <= 0 are skipped).
    Log,
}

/// Titles and axes of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Shown above the plot.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// Left of the y axis.
    pub y_label: String,
    /// Mapping of the x axis.
    pub x_scale: Scale,
    /// Fixed y range (e.g. 0 to 1 for ratios); the data's range otherwise.
    pub y_range: Option<(f64, f64)>,
}

impl Chart {
    /// A linear chart fitted to its data.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_scale: Scale::Linear,
            y_range: None,
        }
    }
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 380.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 58.0;
const BOTTOM: f64 = 55.0;
/// Height of a legend row; a legend wider than the chart wraps, and the plot moves down.
const LEGEND_ROW: f64 = 18.0;
/// Colours distinguishable with the common colour-vision deficiencies (Okabe-Ito).
const PALETTE: [&str; 7] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];

/// Draws `series` as polylines on shared axes, with a legend.
pub fn line_chart(chart: &Chart, series: &[Series]) -> String {
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (chart.x_scale == Scale::Linear || x > 0.0);
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).filter(usable).collect();
    let (mut x0, mut x1) = bounds(points.iter().map(|p| p.0));
    let (mut y0, mut y1) = chart.y_range.unwrap_or_else(|| {
        let (lo, hi) = bounds(points.iter().map(|p| p.1));
        (lo.min(0.0), hi)
    });
    if chart.x_scale == Scale::Log {
        x0 = 10f64.powf(x0.max(f64::MIN_POSITIVE).log10().floor());
        x1 = 10f64.powf(x1.max(x0).log10().ceil().max(x0.log10() + 1.0));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let x_ticks = match chart.x_scale {
        Scale::Linear => linear_ticks(x0, x1),
        Scale::Log => log_ticks(x0, x1),
    };
    if chart.x_scale == Scale::Linear {
        (x0, x1) = (x_ticks[0].min(x0), x_ticks[x_ticks.len() - 1].max(x1));
    }
    let y_ticks = linear_ticks(y0, y1);
    if chart.y_range.is_none() {
        (y0, y1) = (y_ticks[0].min(y0), y_ticks[y_ticks.len() - 1].max(y1));
    }
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| match chart.x_scale {
        Scale::Linear => LEFT + (x - x0) / (x1 - x0) * plot_w,
        Scale::Log => LEFT + (x.log10() - x0.log10()) / (x1.log10() - x0.log10()) * plot_w,
    };
    let py = |y: f64| TOP + plot_h - (y.clamp(y0, y1) - y0) / (y1 - y0) * plot_h;

    let mut svg = String::new();
    for &t in &x_ticks {
        let x = px(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            number(t)
        );
    }
    y_grid(&mut svg, &y_ticks, py);
    axes(&mut svg, chart);
    for (i, s) in series.iter().enumerate() {
        let colour = s.colour_at(i);
        let coords: Vec<String> =
            s.points.iter().filter(|p| usable(p)).map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        if !coords.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                coords.join(" ")
            );
        }
    }
    let entries: Vec<(&str, &str)> =
        series.iter().enumerate().map(|(i, s)| (s.name.as_str(), s.colour_at(i))).collect();
    assemble(chart, &entries, &svg)
}

/// Draws grouped bars: for each category (x), one bar per series, `values[i]` of a series
/// belonging to `categories[i]`. The y axis starts at 0.
pub fn bar_chart(chart: &Chart, categories: &[String], series: &[(String, Vec<f64>)]) -> String {
    let top = chart.y_range.map_or_else(
        || {
            let max = series.iter().flat_map(|s| s.1.iter().copied()).filter(|v| v.is_finite()).fold(0.0, f64::max);
            let ticks = linear_ticks(0.0, if max > 0.0 { max } else { 1.0 });
            ticks[ticks.len() - 1]
        },
        |r| r.1,
    );
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let py = |y: f64| TOP + plot_h - (y.clamp(0.0, top) / top) * plot_h;
    let mut svg = String::new();
    y_grid(&mut svg, &linear_ticks(0.0, top), py);
    let group = plot_w / categories.len().max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    for (c, name) in categories.iter().enumerate() {
        let gx = LEFT + c as f64 * group;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group / 2.0,
            TOP + plot_h + 16.0,
            escape(name)
        );
        for (i, (_, values)) in series.iter().enumerate() {
            let Some(v) = values.get(c).copied().filter(|v| v.is_finite()) else { continue };
            let (x, y) = (gx + group * 0.1 + i as f64 * bar, py(v));
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                (bar - 2.0).max(1.0),
                TOP + plot_h - y,
                PALETTE[i % PALETTE.len()],
                number(v)
            );
        }
    }
    axes(&mut svg, chart);
    let entries: Vec<(&str, &str)> =
        series.iter().enumerate().map(|(i, s)| (s.0.as_str(), PALETTE[i % PALETTE.len()])).collect();
    assemble(chart, &entries, &svg)
}

/// The whole SVG: title, legend (on as many rows as it needs) and the plot drawn in `body`,
/// moved down by the legend's extra rows.
fn assemble(chart: &Chart, legend_entries: &[(&str, &str)], body: &str) -> String {
    let rows = legend_layout(legend_entries.iter().map(|e| e.0));
    let extra = LEGEND_ROW * rows.iter().map(|r| r.1).max().unwrap_or(0) as f64;
    let mut svg = frame(chart, HEIGHT + extra);
    for (&(name, colour), &(lx, row)) in legend_entries.iter().zip(&rows) {
        let ly = 40.0 + LEGEND_ROW * row as f64;
        let _ = write!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(name)
        );
    }
    if extra > 0.0 {
        let _ = write!(svg, r#"<g transform="translate(0 {extra:.1})">{body}</g>"#);
    } else {
        svg.push_str(body);
    }
    svg.push_str("</svg>");
    svg
}

/// Where each legend entry goes: (x, row). Entries fill a row left to right (text about 7 px
/// per character at the chart's font size) and wrap before passing the right edge.
fn legend_layout<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(f64, usize)> {
    let (mut lx, mut row) = (LEFT, 0);
    let mut out = Vec::new();
    for name in names {
        let width = 40.0 + 7.0 * name.chars().count() as f64;
        if lx > LEFT && lx + width - 16.0 > WIDTH - RIGHT {
            (lx, row) = (LEFT, row + 1);
        }
        out.push((lx, row));
        lx += width;
    }
    out
}

/// Horizontal grid lines with their labels at `ticks`, placed by `py`.
fn y_grid(svg: &mut String, ticks: &[f64], py: impl Fn(f64) -> f64) {
    for &t in ticks {
        let y = py(t);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            number(t)
        );
    }
}

/// The opening tag, background and title.
fn frame(chart: &Chart, height: f64) -> String {
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(&chart.title)
    );
    svg
}

/// The axis lines and their labels.
fn axes(svg: &mut String, chart: &Chart) {
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let _ = write!(
        svg,
        r##"<polyline points="{LEFT},{TOP} {LEFT},{b:.1} {r:.1},{b:.1}" fill="none" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        escape(&chart.x_label),
        TOP + plot_h / 2.0,
        escape(&chart.y_label),
        b = TOP + plot_h,
        r = LEFT + plot_w,
    );
}

/// The latency CDF of each histogram (nanoseconds), x in milliseconds.
pub fn cdf_chart(title: &str, histograms: &[(&str, &Histogram<u64>)]) -> String {
    cdf_chart_coloured(title, &histograms.iter().enumerate().map(|(i, (name, h))| (*name, *h, i)).collect::<Vec<_>>())
}

/// [`cdf_chart`] with the palette colour of each histogram given (see [`Series::colour`]).
pub fn cdf_chart_coloured(title: &str, histograms: &[(&str, &Histogram<u64>, usize)]) -> String {
    let series: Vec<Series> =
        histograms.iter().map(|(name, h, colour)| Series::new(*name, cdf_points(h)).with_colour(*colour)).collect();
    let (lo, hi) = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).filter(|x| *x > 0.0));
    let mut chart = Chart::new(title, "latency (ms)", "fraction of calls at or below");
    chart.y_range = Some((0.0, 1.0));
    if lo > 0.0 && hi / lo > 100.0 {
        chart.x_scale = Scale::Log;
    }
    line_chart(&chart, &series)
}

/// Points (latency in ms, cumulative fraction) of `h`: fine steps through the body, finer in
/// the tail, where the interesting differences usually are.
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut quantiles: Vec<f64> = (0..=198).map(|i| f64::from(i) / 200.0).collect();
    quantiles.extend([0.995, 0.999, 0.9995, 0.9999, 1.0]);
    quantiles.into_iter().map(|q| (h.value_at_quantile(q) as f64 / 1e6, q)).collect()
}

/// Escapes text for SVG and HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

/// About five round ticks covering [lo, hi] (steps of 1, 2 or 5 times a power of ten).
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(magnitude * 10.0);
    let first = (lo / step).floor() * step;
    let count = ((hi - first) / step).ceil() as usize;
    (0..=count.min(50)).map(|i| first + i as f64 * step).collect()
}

/// Powers of ten from lo to hi (both powers of ten).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().round() as i32, hi.log10().round() as i32);
    (a..=b.max(a + 1)).map(|e| 10f64.powi(e)).collect()
}

/// A tick label: short, no trailing zeros.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_owned() } else { s.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_draws_every_series_and_its_legend() {
        let chart = Chart::new("hit <ratio>", "seconds", "ratio");
        let svg = line_chart(
            &chart,
            &[Series::new("lru", vec![(0.0, 0.1), (1.0, 0.5)]), Series::new("lfu", vec![(0.0, 0.2), (1.0, 0.7)])],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 2, "one polyline per series");
        assert!(svg.contains(">lru<") && svg.contains(">lfu<"));
        assert!(svg.contains("hit &lt;ratio&gt;"), "the title is escaped");
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn points_stay_inside_the_plot_area() {
        let mut chart = Chart::new("t", "x", "y");
        chart.y_range = Some((0.0, 1.0));
        let svg = line_chart(&chart, &[Series::new("s", vec![(3.0, -2.0), (7.0, 5.0), (f64::NAN, 0.5)])]);
        let points = svg.split("points=\"").nth(2).and_then(|s| s.split('"').next()).expect("the series polyline");
        for pair in points.split(' ') {
            let (x, y) = pair.split_once(',').expect("x,y");
            let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "{y}");
        }
        assert_eq!(points.split(' ').count(), 2, "the NaN point is skipped");
    }

    #[test]
    fn bars_are_grouped_by_category_and_scaled_from_zero() {
        let mut chart = Chart::new("share", "master", "share");
        chart.y_range = Some((0.0, 1.0));
        let cats = vec!["a:1".to_owned(), "b:2".to_owned()];
        let svg = bar_chart(&chart, &cats, &[("x".into(), vec![0.5, 1.0]), ("y".into(), vec![0.25, f64::NAN])]);
        assert_eq!(svg.matches("<rect x=").count(), 3, "the NaN bar is skipped");
        let plot_h = HEIGHT - TOP - BOTTOM;
        assert!(svg.contains(&format!("height=\"{plot_h:.1}\"")), "the 1.0 bar fills the plot: {svg}");
        assert!(svg.contains(&format!("height=\"{:.1}\"", plot_h / 2.0)));
        assert!(svg.contains(">a:1<") && svg.contains(">b:2<") && svg.contains(">y<"));
        assert!(bar_chart(&Chart::new("e", "x", "y"), &[], &[]).ends_with("</svg>"));
    }

    #[test]
    fn a_wide_legend_wraps_inside_the_chart_and_moves_the_plot_down() {
        let names =
            ["database alone", "strata (example Users)", "naive redis-rs cache-aside", "cached crate AsyncRedisCache"];
        let series: Vec<Series> = names.iter().map(|n| Series::new(*n, vec![(0.0, 0.5), (1.0, 0.6)])).collect();
        let svg = line_chart(&Chart::new("t", "x", "y"), &series);
        let layout = legend_layout(names.iter().copied());
        assert!(layout.iter().any(|&(_, row)| row > 0), "four long names do not fit one row: {layout:?}");
        for (&(x, _), name) in layout.iter().zip(names) {
            assert!(
                x + 24.0 + 7.0 * name.chars().count() as f64 <= WIDTH - RIGHT,
                "{name} ends inside the chart at {x}"
            );
        }
        let rows = layout.iter().map(|l| l.1).max().expect("entries") as f64;
        let height = HEIGHT + LEGEND_ROW * rows;
        assert!(svg.contains(&format!(r#"height="{height}""#)), "taller by the extra rows: {svg}");
        assert!(svg.contains(&format!(r#"<g transform="translate(0 {:.1})">"#, LEGEND_ROW * rows)));
        let short = line_chart(&Chart::new("t", "x", "y"), &series[..1]);
        assert!(short.contains(&format!(r#"height="{HEIGHT}""#)) && !short.contains("<g "), "one row: as before");
    }

    #[test]
    fn a_series_keeps_the_colour_it_is_given() {
        let chart = Chart::new("t", "x", "y");
        let svg = line_chart(&chart, &[Series::new("b", vec![(0.0, 1.0), (1.0, 2.0)]).with_colour(1)]);
        assert!(svg.contains(&format!(r#"stroke="{}" stroke-width="2""#, PALETTE[1])), "{svg}");
        assert!(!svg.contains(PALETTE[0]), "not the first colour for being first: {svg}");
        let svg = line_chart(&chart, &[Series::new("a", vec![(0.0, 1.0)]), Series::new("b", vec![(0.0, 2.0)])]);
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]), "by position when not given");
    }

    #[test]
    fn an_empty_chart_still_renders_axes() {
        let svg = line_chart(&Chart::new("empty", "x", "y"), &[]);
        assert!(svg.contains("<polyline") && !svg.contains("NaN"));
    }

    #[test]
    fn a_cdf_rises_from_zero_to_one_and_goes_log_over_wide_ranges() {
        let mut h = crate::stats::histogram();
        for ns in [1_000u64, 2_000, 3_000, 50_000_000] {
            h.record(ns).expect("record");
        }
        let points = cdf_points(&h);
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1), "monotonic");
        assert_eq!(points.last().map(|p| p.1), Some(1.0));
        assert!((points[0].0 - 0.001).abs() < 1e-5, "x is in ms: {:?}", points[0]);
        let svg = cdf_chart("latency", &[("a", &h)]);
        assert!(svg.contains(">0.001<") && svg.contains(">100<"), "decade ticks: {svg}");
        assert!(cdf_points(&crate::stats::histogram()).is_empty());
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = linear_ticks(0.0, 1.0);
        assert_eq!(t.len(), 6);
        assert!(t.iter().zip([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]).all(|(a, b)| (a - b).abs() < 1e-9), "{t:?}");
        let t = linear_ticks(3.0, 97.0);
        assert!(t[0] <= 3.0 && *t.last().expect("ticks") >= 97.0 && t.len() <= 12);
        assert_eq!(number(25_000.0), "25k");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(escape("a&\"b"), "a&amp;&quot;b");
    }
}
