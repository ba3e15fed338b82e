//! Task-vector analysis, as FusionBench's `analysis` methods: the pairwise cosine similarity of
//! the task vectors (`TaskVectorCosSimilarity`: a CSV file and a heatmap) and the distribution of
//! their values (`TaskVectorViolinPlot`: two violin plots). Files go to `output_path`, or the
//! run's log folder when it is null, as FusionBench writes to its logger's folder; the plots are
//! PNG files (FusionBench writes PDF). Both return the pretrained model, which the program
//! then saves and evaluates when asked, as FusionBench's does.
//!
//! Task vectors are read tensor by tensor (one tensor of every model at a time), so models of any
//! size fit in memory; only the sampled points of the violin plot are kept.

mod font;
mod plot;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use fusion_plugin_api::prelude::*;
use fusion_plugin_api::serde_json::Value;

use crate::cpu::task_vectors;
use crate::inputs::Inputs;
use plot::{Canvas, Rgb, BLACK, GREY, WHITE};

/// The CSV file of the similarity matrix (FusionBench's name).
pub const COS_SIMILARITY_CSV: &str = "task_vector_cos_similarity.csv";
/// The heatmap (FusionBench writes the same name with `.pdf`).
pub const COS_SIMILARITY_PNG: &str = "task_vector_cos_similarity.png";
/// The violin plot of the values.
pub const VIOLIN_PNG: &str = "task_vector_violin.png";
/// The violin plot of the absolute values.
pub const VIOLIN_ABS_PNG: &str = "task_vector_violin_abs.png";

/// The folder the files go to: `output_path`, else the run's log folder.
fn output_dir(output_path: &Option<PathBuf>, ctx: &Context, algorithm: &str) -> Result<PathBuf> {
    let dir = match (output_path, ctx.log_dir()) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d,
        (None, None) => {
            return Err(Error::config(format!(
                "{algorithm}: `output_path` is null and the host gives no log folder; set \
                 `output_path` to the folder for its files"
            )))
        }
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("{algorithm}: creating {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Write `bytes` to `dir/name` through a temporary file, so a failed run leaves no half file.
fn write(dir: &Path, name: &str, bytes: &[u8], algorithm: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("{algorithm}: writing {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "{algorithm}: written");
    Ok(path)
}

/// `trainable_only`: a checkpoint does not record which tensors are trainable, so both values
/// take every float tensor (FusionBench's `False` also takes buffers, which a state dict saved
/// from `parameters()` does not hold).
fn read_trainable_only(config: &Config, default: Option<bool>) -> Result<bool> {
    match default {
        Some(d) => config.get_or("trainable_only", d),
        None => config.require("trainable_only"),
    }
}

/// `max_points_per_model`: null or 0 for every value.
fn read_max_points(config: &Config, default: Option<u64>) -> Result<Option<usize>> {
    let v: Option<i64> = match config.get::<Value>("max_points_per_model")? {
        None => default.map(|d| d as i64),
        Some(_) => Some(config.require("max_points_per_model")?),
    };
    match v {
        None | Some(0) => Ok(None),
        Some(n) if n < 0 => Err(Error::config(format!(
            "`{}`: `max_points_per_model` must be null, 0 or positive, got {n}",
            config.target()
        ))),
        Some(n) => Ok(Some(n as usize)),
    }
}

/// The float, non-empty tensors, in the reference's order, with their sizes.
fn float_tensors(inputs: &Inputs) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for name in inputs.names()? {
        let info = inputs.info(&name)?;
        if info.dtype.is_float() && info.numel() > 0 {
            out.push((name, info.numel()));
        }
    }
    Ok(out)
}

/// `k` distinct positions out of `n`, sorted (Floyd's sampling, splitmix64 seeded by `seed`).
/// The same positions serve every model, so sampled task vectors stay aligned.
fn sample_positions(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut chosen = HashSet::with_capacity(k);
    for j in n - k..n {
        let t = (next() % (j as u64 + 1)) as usize;
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    let mut out: Vec<usize> = chosen.into_iter().collect();
    out.sort_unstable();
    out
}

/// Python's `repr` of a float, as pandas writes it to CSV: the shortest digits that round-trip,
/// exponent form below 1e-4 and from 1e16 (`1e-05`, `1.5e+16`).
fn python_repr(v: f64) -> String {
    if v.is_nan() {
        return String::new();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("an integer exponent");
        return format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        );
    }
    let s = format!("{v:?}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

// ---------------------------------------------------------------------------------------------
// Cosine similarity

/// FusionBench's `TaskVectorCosSimilarity`: the cosine similarity of every pair of task vectors
/// τᵢ = θᵢ − θ₀ (each flattened over every float tensor, in f64 as FusionBench casts them),
/// written as `task_vector_cos_similarity.csv` (rows and columns named by the pool's models, as
/// pandas writes it) and, with `plot_heatmap`, a heatmap `task_vector_cos_similarity.png`.
/// Returns the pretrained model.
///
/// Parameters (FusionBench's): `plot_heatmap` (required; its config file sets true),
/// `trainable_only` (true; see [`read_trainable_only`]), `max_points_per_model` (null: every
/// value; else that many positions sampled at random, the same positions for every model, seeded
/// by the run's `seed`), `output_path` (null: the run's log folder). Needs `_pretrained_` and at
/// least two models.
pub struct TaskVectorCosSimilarity {
    plot_heatmap: bool,
    max_points: Option<usize>,
    output_path: Option<PathBuf>,
}

impl FromConfig for TaskVectorCosSimilarity {
    fn from_config(config: &Config) -> Result<Self> {
        read_trainable_only(config, Some(true))?;
        Ok(TaskVectorCosSimilarity {
            plot_heatmap: config.require("plot_heatmap")?,
            max_points: read_max_points(config, None)?,
            output_path: config.get("output_path")?,
        })
    }
}

const COS: &str = "task_vector_cos_similarity";

impl Algorithm for TaskVectorCosSimilarity {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let inputs = Inputs::open(pool, COS, true, 2)?;
        let dir = output_dir(&self.output_path, ctx, COS)?;
        let names: Vec<String> = inputs.models.iter().map(|m| m.name.clone()).collect();
        let matrix = cos_similarity(&inputs, self.max_points, ctx.seed().unwrap_or(0))?;
        write(
            &dir,
            COS_SIMILARITY_CSV,
            csv(&names, &matrix).as_bytes(),
            COS,
        )?;
        if self.plot_heatmap {
            let png = heatmap(&names, &matrix)
                .png()
                .map_err(|e| Error::other(format!("{COS}: encoding the heatmap: {e}")))?;
            write(&dir, COS_SIMILARITY_PNG, &png, COS)?;
        }
        Ok(inputs.base().model.clone())
    }
}

/// The matrix of cosine similarities, from the Gram matrix of the task vectors accumulated
/// tensor by tensor in f64. torch's `cosine_similarity` divides by max(‖x‖‖y‖, 1e-8).
fn cos_similarity(inputs: &Inputs, max_points: Option<usize>, seed: u64) -> Result<Vec<Vec<f64>>> {
    let t = inputs.models.len();
    let tensors = float_tensors(inputs)?;
    let total: usize = tensors.iter().map(|(_, n)| n).sum();
    let positions = max_points
        .filter(|&k| k < total)
        .map(|k| sample_positions(total, k, seed));
    let mut gram = vec![vec![0.0f64; t]; t];
    let mut offset = 0;
    let mut next = 0; // the first sampled position not yet reached
    for (name, n) in &tensors {
        let tvs = task_vectors(inputs, name)?;
        let picks: Vec<usize> = match &positions {
            None => (0..*n).collect(),
            Some(p) => {
                let from = next;
                while next < p.len() && p[next] < offset + n {
                    next += 1;
                }
                p[from..next].iter().map(|&g| g - offset).collect()
            }
        };
        for i in 0..t {
            for j in i..t {
                let dot: f64 = picks
                    .iter()
                    .map(|&k| f64::from(tvs[i][k]) * f64::from(tvs[j][k]))
                    .sum();
                gram[i][j] += dot;
            }
        }
        offset += n;
    }
    let mut out = vec![vec![0.0; t]; t];
    for i in 0..t {
        for j in i..t {
            let denom = (gram[i][i] * gram[j][j]).sqrt().max(1e-8);
            out[i][j] = gram[i][j] / denom;
            out[j][i] = out[i][j];
        }
    }
    Ok(out)
}

/// pandas' `DataFrame.to_csv` of the matrix: a header of the names after an empty corner, then
/// one row per name.
fn csv(names: &[String], matrix: &[Vec<f64>]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    for n in names {
        out.push(',');
        out.push_str(&quote(n));
    }
    out.push('\n');
    for (n, row) in names.iter().zip(matrix) {
        out.push_str(&quote(n));
        for v in row {
            out.push(',');
            out.push_str(&python_repr(*v));
        }
        out.push('\n');
    }
    out
}

/// The heatmap: one cell per pair coloured by GnBu between the matrix's minimum and maximum
/// (seaborn's default range), each annotated with its value to two decimals, names on both
/// axes, a colour bar at the right, and the title FusionBench gives it.
fn heatmap(names: &[String], matrix: &[Vec<f64>]) -> Canvas {
    const CELL: i64 = 56;
    const PAD: i64 = 12;
    let n = names.len() as i64;
    let label = names.iter().map(|s| plot::text_width(s)).max().unwrap_or(0);
    let title = "Heatmap of Cos Similarities";
    let (x0, y0) = (PAD + label + 8, PAD + 2 * font::HEIGHT as i64 + 8);
    let grid = n * CELL;
    let bar_x = x0 + grid + 16;
    let bar_w = 16;
    let title_w = plot::text_width(title);
    let title_x = (x0 + (grid - title_w) / 2).max(PAD);
    let width = (bar_x + bar_w + 8 + plot::text_width("-0.00") + PAD).max(title_x + title_w + PAD);
    let height = y0 + grid + 8 + label + PAD;
    let mut c = Canvas::new(width as usize, height as usize, WHITE);
    let values = matrix.iter().flatten().copied();
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    let norm = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    c.text(title_x, PAD, title, BLACK, 1);
    for (i, row) in matrix.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let (cx, cy) = (x0 + j as i64 * CELL, y0 + i as i64 * CELL);
            let color = plot::gnbu(norm(*v));
            c.fill(cx, cy, cx + CELL, cy + CELL, color);
            let text = format!("{v:.2}");
            let ink = if plot::luminance(color) > 0.408 {
                BLACK
            } else {
                WHITE
            };
            c.text(
                cx + (CELL - plot::text_width(&text)) / 2,
                cy + (CELL - font::HEIGHT as i64) / 2,
                &text,
                ink,
                1,
            );
        }
    }
    for (i, name) in names.iter().enumerate() {
        let mid = i as i64 * CELL + CELL / 2;
        // row labels at the left, right-aligned; column labels below, read upwards
        c.text(
            x0 - 6 - plot::text_width(name),
            y0 + mid - font::HEIGHT as i64 / 2,
            name,
            BLACK,
            1,
        );
        c.text_up(
            x0 + mid - font::HEIGHT as i64 / 2,
            y0 + grid + 6,
            name,
            BLACK,
        );
    }
    for y in 0..grid {
        let color = plot::gnbu(1.0 - y as f64 / (grid - 1).max(1) as f64);
        c.fill(bar_x, y0 + y, bar_x + bar_w, y0 + y + 1, color);
    }
    c.frame(bar_x, y0, bar_x + bar_w, y0 + grid - 1, GREY);
    for (v, y) in [(hi, y0), (lo, y0 + grid - font::HEIGHT as i64)] {
        c.text(bar_x + bar_w + 6, y, &format!("{v:.2}"), BLACK, 1);
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Violin plots

/// FusionBench's `TaskVectorViolinPlot`: the distribution of each model's task-vector values
/// as violins side by side (`task_vector_violin.png`), and of their absolute values
/// (`task_vector_violin_abs.png`), each violin a Gaussian kernel density estimate (Scott's
/// bandwidth, cut two bandwidths past the extremes, as seaborn draws them) with the quartiles
/// and the median inside. Returns the pretrained model.
///
/// Parameters (FusionBench's): `trainable_only` (required; see [`read_trainable_only`]),
/// `max_points_per_model` (1000; null or 0 for every value; sampled positions seeded by the
/// run's `seed`), `fig_kwargs` (null; `figsize` [width, height] in inches and `dpi`, as
/// matplotlib's, default [6.4, 4.8] at 100 dpi; any other key is an error), `output_path` (null:
/// the run's log folder). Needs `_pretrained_` and at least one model.
pub struct TaskVectorViolinPlot {
    max_points: Option<usize>,
    width: usize,
    height: usize,
    output_path: Option<PathBuf>,
}

impl FromConfig for TaskVectorViolinPlot {
    fn from_config(config: &Config) -> Result<Self> {
        read_trainable_only(config, None)?;
        let (width, height) = figure_size(config)?;
        Ok(TaskVectorViolinPlot {
            max_points: read_max_points(config, Some(1000))?,
            width,
            height,
            output_path: config.get("output_path")?,
        })
    }
}

/// The figure's size in pixels from `fig_kwargs`: `figsize` × `dpi`.
fn figure_size(config: &Config) -> Result<(usize, usize)> {
    let target = config.target();
    let Some(kwargs) = config.get::<Value>("fig_kwargs")? else {
        return Ok((640, 480));
    };
    let Value::Object(map) = kwargs else {
        return Err(Error::config(format!(
            "`{target}`: `fig_kwargs` must be a mapping (such as {{figsize: [8, 5], dpi: 120}}), got {kwargs}"
        )));
    };
    let (mut w, mut h, mut dpi) = (6.4f64, 4.8f64, 100.0f64);
    for (key, v) in &map {
        match key.as_str() {
            "figsize" => {
                let size: Option<Vec<f64>> = serde_json::from_value(v.clone()).ok();
                match size.as_deref() {
                    Some(&[a, b]) if a > 0.0 && b > 0.0 => (w, h) = (a, b),
                    _ => {
                        return Err(Error::config(format!(
                            "`{target}`: `fig_kwargs.figsize` must be [width, height] in inches, got {v}"
                        )))
                    }
                }
            }
            "dpi" => match v.as_f64() {
                Some(d) if d > 0.0 => dpi = d,
                _ => {
                    return Err(Error::config(format!(
                        "`{target}`: `fig_kwargs.dpi` must be a positive number, got {v}"
                    )))
                }
            },
            other => {
                return Err(Error::config(format!(
                    "`{target}`: unknown parameter `fig_kwargs.{other}`; fusion-host draws the \
                     figure itself and takes `figsize` and `dpi` in `fig_kwargs`"
                )))
            }
        }
    }
    let (pw, ph) = ((w * dpi).round(), (h * dpi).round());
    if !(160.0..=8000.0).contains(&pw) || !(120.0..=8000.0).contains(&ph) {
        return Err(Error::config(format!(
            "`{target}`: `fig_kwargs` gives a {pw}×{ph} pixel figure; it must be 160×120 to 8000×8000"
        )));
    }
    Ok((pw as usize, ph as usize))
}

const VIOLIN: &str = "task_vector_violin_plot";

impl Algorithm for TaskVectorViolinPlot {
    fn run(&self, pool: &dyn ModelPool, ctx: &Context) -> Result<Model> {
        let inputs = Inputs::open(pool, VIOLIN, true, 1)?;
        let dir = output_dir(&self.output_path, ctx, VIOLIN)?;
        let names: Vec<String> = inputs.models.iter().map(|m| m.name.clone()).collect();
        let samples = sampled_values(&inputs, self.max_points, ctx.seed().unwrap_or(0))?;
        let abs: Vec<Vec<f64>> = samples
            .iter()
            .map(|s| s.iter().map(|v| v.abs()).collect())
            .collect();
        for (file, data, title, ylabel) in [
            (
                VIOLIN_PNG,
                &samples,
                "Distribution of Task Vector Values",
                "Task Vector Values",
            ),
            (
                VIOLIN_ABS_PNG,
                &abs,
                "Distribution of Task Vector Absolute Values",
                "The Absolute Values",
            ),
        ] {
            let png = violins(self.width, self.height, &names, data, title, ylabel)
                .png()
                .map_err(|e| Error::other(format!("{VIOLIN}: encoding {file}: {e}")))?;
            write(&dir, file, &png, VIOLIN)?;
        }
        Ok(inputs.base().model.clone())
    }
}

/// Each model's task-vector values at the sampled positions (every value without a limit).
fn sampled_values(inputs: &Inputs, max_points: Option<usize>, seed: u64) -> Result<Vec<Vec<f64>>> {
    let tensors = float_tensors(inputs)?;
    let total: usize = tensors.iter().map(|(_, n)| n).sum();
    let positions = max_points
        .filter(|&k| k < total)
        .map(|k| sample_positions(total, k, seed));
    let mut out = vec![Vec::new(); inputs.models.len()];
    let (mut offset, mut next) = (0, 0);
    for (name, n) in &tensors {
        let tvs = task_vectors(inputs, name)?;
        let picks: Vec<usize> = match &positions {
            None => (0..*n).collect(),
            Some(p) => {
                let from = next;
                while next < p.len() && p[next] < offset + n {
                    next += 1;
                }
                p[from..next].iter().map(|&g| g - offset).collect()
            }
        };
        for (o, tv) in out.iter_mut().zip(&tvs) {
            o.extend(picks.iter().map(|&k| f64::from(tv[k])));
        }
        offset += n;
    }
    Ok(out)
}

/// A violin: the density on a grid of values, and the quartiles.
struct Violin {
    grid: Vec<f64>,
    density: Vec<f64>,
    q: [f64; 5], // whisker low, q1, median, q3, whisker high
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + (next - sorted[i]) * f,
        None => sorted[i],
    }
}

/// Gaussian KDE with Scott's bandwidth (scipy's `gaussian_kde`, as seaborn uses), evaluated on
/// 100 points from two bandwidths below the minimum to two above the maximum.
fn violin(values: &[f64]) -> Violin {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len().max(1) as f64;
    let mean = sorted.iter().sum::<f64>() / n;
    let var = sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
    let mut bw = var.sqrt() * n.powf(-0.2);
    if bw.is_nan() || bw <= 0.0 {
        bw = ((hi - lo).abs() / 100.0).max(1e-12);
    }
    let (from, to) = (lo - 2.0 * bw, hi + 2.0 * bw);
    let grid: Vec<f64> = (0..100)
        .map(|i| from + (to - from) * i as f64 / 99.0)
        .collect();
    let norm = 1.0 / (n * bw * (2.0 * std::f64::consts::PI).sqrt());
    let density = grid
        .iter()
        .map(|&x| {
            norm * sorted
                .iter()
                .map(|v| (-0.5 * ((x - v) / bw).powi(2)).exp())
                .sum::<f64>()
        })
        .collect();
    let (q1, med, q3) = (
        quantile(&sorted, 0.25),
        quantile(&sorted, 0.5),
        quantile(&sorted, 0.75),
    );
    let iqr = q3 - q1;
    let wl = sorted
        .iter()
        .copied()
        .find(|&v| v >= q1 - 1.5 * iqr)
        .unwrap_or(lo);
    let wh = sorted
        .iter()
        .rev()
        .copied()
        .find(|&v| v <= q3 + 1.5 * iqr)
        .unwrap_or(hi);
    Violin {
        grid,
        density,
        q: [wl, q1, med, q3, wh],
    }
}

/// The violin plot of `data` (one list of values per model).
fn violins(
    width: usize,
    height: usize,
    names: &[String],
    data: &[Vec<f64>],
    title: &str,
    ylabel: &str,
) -> Canvas {
    let mut c = Canvas::new(width, height, WHITE);
    let fh = font::HEIGHT as i64;
    let vs: Vec<Violin> = data
        .iter()
        .map(|d| {
            if d.is_empty() {
                violin(&[0.0])
            } else {
                violin(d)
            }
        })
        .collect();
    let lo = vs.iter().map(|v| v.grid[0]).fold(f64::INFINITY, f64::min);
    let hi = vs
        .iter()
        .map(|v| v.grid[v.grid.len() - 1])
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let ticks = plot::ticks(lo, hi, 6);
    let tick_w = ticks
        .iter()
        .map(|t| plot::text_width(&plot::tick_label(*t)))
        .max()
        .unwrap_or(0);
    let label_h = names.iter().map(|s| plot::text_width(s)).max().unwrap_or(0);
    let (x0, y0) = (8 + fh + 6 + tick_w + 8, 8 + fh + 10);
    let (x1, y1) = (width as i64 - 12, height as i64 - 8 - label_h - 8);
    let (x1, y1) = (x1.max(x0 + 10), y1.max(y0 + 10));
    let ypx = |v: f64| y1 - ((v - lo) / (hi - lo) * (y1 - y0) as f64).round() as i64;
    c.text(
        x0 + ((x1 - x0) - plot::text_width(title)) / 2,
        8,
        title,
        BLACK,
        1,
    );
    c.text_up(
        8,
        y0 + ((y1 - y0) - plot::text_width(ylabel)) / 2,
        ylabel,
        BLACK,
    );
    for t in &ticks {
        let y = ypx(*t);
        let label = plot::tick_label(*t);
        c.line(x0 - 4, y, x0, y, BLACK);
        c.line(x0 + 1, y, x1 - 1, y, [235, 235, 235]);
        c.text(
            x0 - 6 - plot::text_width(&label),
            y - fh / 2,
            &label,
            BLACK,
            1,
        );
    }
    let slot = (x1 - x0) as f64 / vs.len().max(1) as f64;
    // seaborn's `density_norm="area"`: every violin's density on one scale, the widest at 0.8
    // of its slot.
    let peak = vs
        .iter()
        .flat_map(|v| v.density.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-300);
    for (i, v) in vs.iter().enumerate() {
        let color: Rgb = plot::DEEP[i % plot::DEEP.len()];
        let mid = x0 + (slot * (i as f64 + 0.5)).round() as i64;
        let half = |d: f64| (d / peak * slot * 0.4).round() as i64;
        // fill row by row, the half-width interpolated from the density grid
        let (top, bottom) = (ypx(v.grid[v.grid.len() - 1]), ypx(v.grid[0]));
        for y in top..=bottom {
            let value = lo + (y1 - y) as f64 / (y1 - y0) as f64 * (hi - lo);
            let pos = (value - v.grid[0]) / (v.grid[v.grid.len() - 1] - v.grid[0]) * 99.0;
            if !(0.0..=99.0).contains(&pos) {
                continue;
            }
            let k = (pos.floor() as usize).min(98);
            let f = pos - k as f64;
            let d = v.density[k] * (1.0 - f) + v.density[k + 1] * f;
            let w = half(d);
            c.fill(mid - w, y, mid + w + 1, y + 1, color);
            c.set(mid - w, y, GREY);
            c.set(mid + w, y, GREY);
        }
        // inner box: whiskers thin, quartiles thick, the median a white dot
        let [wl, q1, med, q3, wh] = v.q;
        c.line(mid, ypx(wh), mid, ypx(wl), [60, 60, 60]);
        c.fill(mid - 2, ypx(q3), mid + 3, ypx(q1) + 1, [60, 60, 60]);
        c.fill(mid - 1, ypx(med) - 1, mid + 2, ypx(med) + 2, WHITE);
        c.text_up(mid - fh / 2, y1 + 8, &names[i], BLACK);
    }
    c.frame(x0, y0, x1, y1, BLACK);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        assert_eq!(python_repr(1.0), "1.0");
        assert_eq!(python_repr(-0.022668389981867716), "-0.022668389981867716");
        assert_eq!(python_repr(1.5e-5), "1.5e-05");
        assert_eq!(python_repr(1e-4), "0.0001");
        assert_eq!(python_repr(2e16), "2e+16");
        assert_eq!(python_repr(0.0), "0.0");
    }

    #[test]
    fn sampling_is_distinct_sorted_and_seeded() {
        let a = sample_positions(1000, 100, 7);
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[99] < 1000);
        assert_eq!(a, sample_positions(1000, 100, 7));
        assert_ne!(a, sample_positions(1000, 100, 8));
        assert_eq!(sample_positions(5, 5, 1), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn violin_statistics() {
        let v = violin(&[1.0, 2.0, 3.0, 4.0, 100.0]);
        assert_eq!(v.q[1..4], [2.0, 3.0, 4.0]);
        // 100 is past q3 + 1.5·IQR = 7: the upper whisker stops at 4
        assert_eq!((v.q[0], v.q[4]), (1.0, 4.0));
        // a density integrates to about 1 over its grid
        let step = v.grid[1] - v.grid[0];
        let area: f64 = v.density.iter().sum::<f64>() * step;
        assert!((area - 1.0).abs() < 0.05, "{area}");
    }
}
