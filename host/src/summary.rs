//! Results at a glance: a table of runs (their distinguishing overrides and report metrics) as
//! markdown and CSV, and SVG plots of the average accuracy against each numeric swept key. Used
//! at the end of a `--multirun` sweep and by `fusion-host report`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

/// One run: where it is, the overrides that tell it apart, how it ended, its report.
#[derive(Debug, Clone)]
pub struct Row {
    /// The job number or the run's folder, as the table's first column shows it.
    pub label: String,
    /// `(key, value)` of each override shown as a column.
    pub values: Vec<(String, String)>,
    /// `ok`, or why it failed.
    pub status: String,
    /// The report (`program_report.json`), when the run wrote one.
    pub report: Option<Json>,
}

/// The table: a header and the rows' cells.
#[derive(Debug, Clone)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The numeric leaves of a report, as dotted keys (`sun397.accuracy`, `average.accuracy`,
/// `model_info.all_params`), in report order.
pub fn metrics(report: &Json) -> Vec<(String, String)> {
    fn walk(v: &Json, path: &mut Vec<String>, out: &mut Vec<(String, String)>) {
        match v {
            Json::Object(m) => {
                for (k, c) in m {
                    path.push(k.clone());
                    walk(c, path, out);
                    path.pop();
                }
            }
            Json::Number(n) if !path.is_empty() => out.push((path.join("."), n.to_string())),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(report, &mut Vec::new(), &mut out);
    out
}

/// The average accuracy of a FusionBench-shaped report.
pub fn average_accuracy(report: &Json) -> Option<f64> {
    report.pointer("/average/accuracy").and_then(Json::as_f64)
}

/// Build the table. `first` names the first column (`job`, `run`); `keys` are the override
/// columns. Metric columns follow in order of first appearance, `average.*` first.
pub fn table(first: &str, keys: &[String], rows: &[Row]) -> Table {
    let mut metric_cols: Vec<String> = Vec::new();
    let per_row: Vec<Vec<(String, String)>> = rows
        .iter()
        .map(|r| r.report.as_ref().map(metrics).unwrap_or_default())
        .collect();
    for m in &per_row {
        for (k, _) in m {
            if !metric_cols.contains(k) {
                metric_cols.push(k.clone());
            }
        }
    }
    metric_cols.sort_by_key(|k| !k.starts_with("average."));
    let mut header = vec![first.to_string()];
    header.extend(keys.iter().cloned());
    header.push("status".into());
    header.extend(metric_cols.iter().cloned());
    let rows = rows
        .iter()
        .zip(&per_row)
        .map(|(r, m)| {
            let mut cells = vec![r.label.clone()];
            for k in keys {
                cells.push(
                    r.values
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                );
            }
            cells.push(r.status.clone());
            for c in &metric_cols {
                cells.push(
                    m.iter()
                        .find(|(k, _)| k == c)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                );
            }
            cells
        })
        .collect();
    Table { header, rows }
}

impl Table {
    /// GitHub markdown; numbers with more than 4 decimals are shortened to 4.
    pub fn markdown(&self) -> String {
        let cell = |s: &str| {
            let short = match s.parse::<f64>() {
                Ok(f) if s.contains('.') && s.split('.').nth(1).is_some_and(|d| d.len() > 4) => {
                    format!("{f:.4}")
                }
                _ => s.to_string(),
            };
            short.replace('|', "\\|").replace('\n', " ")
        };
        let mut out = String::new();
        let line = |cells: &[String]| {
            format!(
                "| {} |\n",
                cells
                    .iter()
                    .map(|c| cell(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        };
        out.push_str(&line(&self.header));
        out.push_str(&format!(
            "|{}\n",
            self.header.iter().map(|_| "---|").collect::<String>()
        ));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    /// RFC 4180 CSV, full precision.
    pub fn csv(&self) -> String {
        let field = |s: &String| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.clone()
            }
        };
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            out.push_str(&r.iter().map(field).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    }
}

/// The keys whose values are numbers in every row that has one (and that vary).
pub fn numeric_keys(keys: &[String], rows: &[Row]) -> Vec<String> {
    keys.iter()
        .filter(|k| {
            let vals: Vec<&String> = rows
                .iter()
                .filter_map(|r| r.values.iter().find(|(key, _)| key == *k).map(|(_, v)| v))
                .collect();
            let mut distinct: Vec<&&String> = vals.iter().collect();
            distinct.sort();
            distinct.dedup();
            !vals.is_empty()
                && distinct.len() > 1
                && vals
                    .iter()
                    .all(|v| v.parse::<f64>().is_ok_and(f64::is_finite))
        })
        .cloned()
        .collect()
}

/// Write `accuracy_vs_<key>.svg` into `dir` for each numeric key with at least one accuracy;
/// one line per combination of the other keys' values. Returns the files written.
pub fn write_plots(dir: &Path, keys: &[String], rows: &[Row]) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for key in numeric_keys(keys, rows) {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for r in rows {
            let Some(x) = r
                .values
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse::<f64>().ok())
            else {
                continue;
            };
            let Some(y) = r.report.as_ref().and_then(average_accuracy) else {
                continue;
            };
            let label = r
                .values
                .iter()
                .filter(|(k, _)| *k != key)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            match series.iter_mut().find(|(l, _)| *l == label) {
                Some((_, pts)) => pts.push((x, y)),
                None => series.push((label, vec![(x, y)])),
            }
        }
        if series.is_empty() {
            continue;
        }
        for (_, pts) in &mut series {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let file_key: String = key
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("accuracy_vs_{file_key}.svg"));
        crate::program::write_atomic(&path, svg_plot(&key, &series).as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The opening of an SVG image of `w` × `h` on white, with `title` (already escaped) centred
/// at the top; the caller adds the rest and the closing `</svg>`.
fn svg_start(w: f64, h: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{title}</text>"#,
        w / 2.0
    );
    s
}

/// "Nice" tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).ceil() * step;
    (0..=20)
        .map(|i| start + i as f64 * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .collect()
}

fn fmt_tick(t: f64) -> String {
    let s = format!("{:.6}", t);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// A line plot of the average accuracy against `key`, one polyline per series.
fn svg_plot(key: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 440.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 60.0;
    const COLOURS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    ];
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 - x0 < 1e-12 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    let pad = ((y1 - y0) * 0.1).max(0.005);
    y0 -= pad;
    y1 += pad;
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let sy = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
    let mut s = svg_start(W, H, &format!("average accuracy vs {}", esc(key)));
    // Axes, grid and ticks.
    let _ = writeln!(
        s,
        r#"<path d="M{L} {T} V{} H{}" stroke="black" fill="none"/>"#,
        H - B,
        W - R
    );
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - B,
            H - B + 5.0,
            H - B + 20.0,
            fmt_tick(t)
        );
    }
    for t in ticks(y0, y1) {
        let y = sy(t);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (L + W - R) / 2.0,
        H - 15.0,
        esc(key)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">average accuracy</text>"#,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
    for (i, (label, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let d: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            d.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{}={} : {y}</title></circle>"#,
                sx(x),
                sy(y),
                esc(key),
                fmt_tick(x)
            );
        }
        if !label.is_empty() {
            let y = T + 8.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                L + 12.0,
                L + 32.0,
                L + 38.0,
                y + 4.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A horizontal bar chart of the average accuracy of each run (`bars`: label, accuracy), for
/// comparing methods. Written to `path`.
pub fn write_bars(path: &Path, bars: &[(String, f64)]) -> anyhow::Result<()> {
    const LABEL_W: f64 = 380.0;
    const BAR_W: f64 = 360.0;
    const ROW: f64 = 24.0;
    const TOP: f64 = 44.0;
    let w = LABEL_W + BAR_W + 80.0;
    let h = TOP + ROW * bars.len() as f64 + 30.0;
    let hi = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-12);
    // Accuracies are fractions: the axis runs to 1 unless a value is larger.
    let top = if hi <= 1.0 { 1.0 } else { hi };
    let mut s = svg_start(w, h, "average accuracy");
    for t in ticks(0.0, top) {
        let x = LABEL_W + t / top * BAR_W;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{:.1}" stroke="#dddddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP - 6.0,
            h - 24.0,
            h - 10.0,
            fmt_tick(t)
        );
    }
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let len = (v / top).clamp(0.0, 1.0) * BAR_W;
        let short: String = if label.chars().count() > 60 {
            format!("{}...", label.chars().take(57).collect::<String>())
        } else {
            label.clone()
        };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}<title>{}</title></text><rect x="{LABEL_W}" y="{:.1}" width="{len:.1}" height="{:.1}" fill="#1f77b4"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            LABEL_W - 8.0,
            y + 15.0,
            esc(&short),
            esc(label),
            y + 3.0,
            ROW - 6.0,
            LABEL_W + len + 6.0,
            y + 15.0,
            fmt_tick((v * 10_000.0).round() / 10_000.0)
        );
    }
    s.push_str("</svg>\n");
    crate::program::write_atomic(path, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, values: &[(&str, &str)], acc: Option<f64>) -> Row {
        Row {
            label: label.into(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: if acc.is_some() {
                "ok".into()
            } else {
                "failed".into()
            },
            report: acc.map(|a| {
                serde_json::json!({"mnist": {"accuracy": a + 0.1, "loss": 0.5},
                                   "average": {"accuracy": a, "loss": 0.25}})
            }),
        }
    }

    #[test]
    fn table_has_keys_status_and_metrics_with_average_first() {
        let keys = vec!["method.scaling_factor".to_string()];
        let rows = [
            row("0", &[("method.scaling_factor", "0.1")], Some(0.5)),
            row("1", &[("method.scaling_factor", "0.3")], None),
        ];
        let t = table("job", &keys, &rows);
        assert_eq!(
            t.header,
            [
                "job",
                "method.scaling_factor",
                "status",
                "average.accuracy",
                "average.loss",
                "mnist.accuracy",
                "mnist.loss"
            ]
        );
        assert_eq!(t.rows[0], ["0", "0.1", "ok", "0.5", "0.25", "0.6", "0.5"]);
        assert_eq!(t.rows[1], ["1", "0.3", "failed", "", "", "", ""]);
        assert_eq!(t.csv().lines().nth(1).unwrap(), "0,0.1,ok,0.5,0.25,0.6,0.5");
        assert!(t
            .markdown()
            .starts_with("| job | method.scaling_factor | status |"));
    }

    #[test]
    fn plots_one_line_per_other_key_with_a_point_per_run() {
        let keys = vec!["a".to_string(), "m".to_string()];
        let rows = [
            row("0", &[("a", "0.1"), ("m", "x")], Some(0.5)),
            row("1", &[("a", "0.3"), ("m", "x")], Some(0.7)),
            row("2", &[("a", "0.1"), ("m", "y")], Some(0.4)),
            row("3", &[("a", "0.3"), ("m", "y")], None),
        ];
        assert_eq!(numeric_keys(&keys, &rows), ["a"]);
        let dir = tempfile::tempdir().unwrap();
        let files = write_plots(dir.path(), &keys, &rows).unwrap();
        assert_eq!(files, [dir.path().join("accuracy_vs_a.svg")]);
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains(">m=x<") && svg.contains(">m=y<"));
        // The best point is highest (smallest y coordinate).
        let ys: Vec<f64> = svg
            .split("cy=\"")
            .skip(1)
            .map(|t| t.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert!(ys[1] < ys[0] && ys[0] < ys[2], "{ys:?}");
    }
}
