//! Prints what `fusion_datasets::open` makes of a source:
//! `cargo run -p fusion-datasets --example describe -- <source> [split] [image_column] [label_column]`.
//! With `FUSION_DATASETS_READ_ALL=1` it also reads every sample and prints the time taken.

use fusion_datasets::{open, DatasetSpec};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(source) = args.first() else {
        eprintln!("usage: describe <hub id or path> [split] [image_column] [label_column]");
        std::process::exit(2);
    };
    let mut spec = DatasetSpec::new(source.as_str());
    if let Some(split) = args.get(1) {
        spec.split = split.clone();
    }
    spec.image_column = args.get(2).cloned();
    spec.label_column = args.get(3).cloned();
    let result = open(&spec).and_then(|ds| {
        println!("{}", ds.describe());
        if let Some(classes) = ds.classes() {
            println!("classes: {}", classes.join(", "));
        }
        for i in 0..ds.len().min(3) {
            let s = ds.get(i)?;
            println!(
                "sample {i}: label {}, {} image bytes",
                s.label,
                s.image.len()
            );
        }
        if std::env::var_os("FUSION_DATASETS_READ_ALL").is_some() {
            let start = std::time::Instant::now();
            let mut bytes = 0;
            for i in 0..ds.len() {
                bytes += ds.get(i)?.image.len();
            }
            println!(
                "read {} samples ({bytes} image bytes) in {:.3} s",
                ds.len(),
                start.elapsed().as_secs_f64()
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
