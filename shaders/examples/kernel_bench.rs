//! Throughput of the merge kernels on one adapter, per launch size: the figures behind launch
//! shapes such as the histogram's workgroup cap (BENCHMARKS.md, "Kernel throughput").
//!
//! ```sh
//! cargo run --release -p fusion-kernels --example kernel_bench -- [--device cpu|gpu|NAME] [N ...]
//! ```
//!
//! For each N (elements per tensor; default 589824, 2359296 and 8388608, the sizes of a
//! ViT-B/32's MLP bias-free matrices and more), with eight fine-tuned-like f32 tensors and a base
//! on the device: the eight-input weighted sum of task arithmetic, radix-histogram passes on
//! `|x - base|` (one byte; TIES's two digits, the second over the fullest bin of the first), one
//! elected-sum step, and an upload with a histogram after it.
//! Each is run seven times and the fastest time is printed, with elements per second.
//!
//! With `--gemm`: GFLOP/s of every `nn::gemm` variant the adapter runs on the products of a
//! ViT-B/32 layer at batch 32 (1600 token rows), plain and with the bias + quick_gelu epilogue
//! fused, fastest of five runs.

use std::time::Instant;

use fusion_gpu::{DeviceChoice, Runtime, RuntimeOptions};
use fusion_plugin_api::{Binding, Compute, DType};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let gemm_mode = args.iter().any(|a| a == "--gemm");
    args.retain(|a| a != "--gemm");
    let mut device = DeviceChoice::Cpu;
    if let Some(i) = args.iter().position(|a| a == "--device") {
        device = args
            .get(i + 1)
            .expect("--device needs a value")
            .parse()
            .expect("--device: auto, gpu, cpu or part of an adapter name");
        args.drain(i..i + 2);
    }
    let sizes: Vec<usize> = if args.is_empty() {
        vec![589_824, 2_359_296, 8_388_608]
    } else {
        args.iter()
            .map(|a| a.parse().expect("sizes are element counts"))
            .collect()
    };
    let rt = Runtime::new(&device, RuntimeOptions::default()).expect("opening the adapter");
    let c: &dyn Compute = &rt;
    if gemm_mode {
        bench_gemm(c);
        return;
    }
    println!(
        "{} (unified memory: {}); {} workgroups per histogram launch at most",
        c.device_name(),
        rt.unified_memory(),
        fusion_kernels::histogram_max_workgroups(c)
    );
    for n in sizes {
        bench_size(c, n);
    }
}

/// A reproducible value in [-0.5, 0.5) for element `i` of stream `s`.
fn noise(i: usize, s: u64) -> f32 {
    let h = (i as u64 ^ s).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    h as f32 / (1u64 << 24) as f32 - 0.5
}

fn bench_size(c: &dyn Compute, n: usize) {
    let base: Vec<f32> = (0..n).map(|i| noise(i, 0) * 0.04).collect();
    let fine: Vec<f32> = base
        .iter()
        .enumerate()
        .map(|(i, b)| b + noise(i, 0x5555) * 0.01)
        .collect();
    let fine_bytes: &[u8] = bytemuck::cast_slice(&fine);
    let b = c
        .create(DType::F32, &[n], Some(bytemuck::cast_slice(&base)))
        .unwrap();
    let xs: Vec<_> = (0..8)
        .map(|_| c.create(DType::F32, &[n], Some(fine_bytes)).unwrap())
        .collect();
    // Big enough for the widest digit (2^19 bins of two words).
    let [first, second] = [
        fusion_kernels::RADIX_TWO_PASS[0],
        fusion_kernels::RADIX_TWO_PASS[1],
    ];
    let hist = c
        .create(DType::U32, &[2 * second.bins() as usize], None)
        .unwrap();
    // The second pass counts the elements of the fullest bin of the first, as in TIES, where
    // the chosen bin is one near the 80th percentile of |x - base|.
    let fullest = {
        let h = c
            .create(DType::U32, &[2 * first.bins() as usize], None)
            .unwrap();
        let start = fusion_kernels::RadixState::new(1);
        fusion_kernels::radix_histogram_delta(c, Binding::write(h), xs[0], b, first, start)
            .unwrap();
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&c.read(h).unwrap());
        c.release(h);
        let bin = (0..first.bins() as usize)
            .max_by_key(|&i| words[2 * i])
            .unwrap() as u32;
        fusion_kernels::RadixState {
            prefix: bin << first.shift,
            mask: first.mask(),
            rank: 1,
        }
    };
    let s = c.create(DType::F32, &[n], None).unwrap();
    let out = c.create(DType::F32, &[n], None).unwrap();
    let inputs: Vec<_> = xs.iter().map(|&x| (x, 0.3f32)).collect();
    let time = |what: &str, elements: usize, f: &dyn Fn()| {
        let mut best = f64::INFINITY;
        for _ in 0..7 {
            let t = Instant::now();
            f();
            c.synchronize().unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "  {what:<34} {:>8.2} ms  {:>6.3} G elements/s",
            best * 1e3,
            elements as f64 / best / 1e9
        );
    };
    println!("n = {n}");
    time("weighted sum of 8", 8 * n, &|| {
        fusion_kernels::weighted_sum_into(c, &inputs, out).unwrap()
    });
    let bytes = fusion_kernels::RADIX_BYTES[0];
    let start = fusion_kernels::RadixState::new(1);
    time("radix histogram, 8 bits of |x - base|", n, &|| {
        fusion_kernels::radix_histogram_delta(c, Binding::write(hist), xs[0], b, bytes, start)
            .unwrap()
    });
    time("radix histogram, top 12 bits", n, &|| {
        fusion_kernels::radix_histogram_delta(c, Binding::write(hist), xs[0], b, first, start)
            .unwrap()
    });
    time("radix histogram, low 19 bits of a bin", n, &|| {
        fusion_kernels::radix_histogram_delta(c, Binding::write(hist), xs[0], b, second, fullest)
            .unwrap()
    });
    time("elected-sum step (x - base)", n, &|| {
        fusion_kernels::ties_elect_delta(c, s, xs[0], b, 0.001, true).unwrap()
    });
    let ids: Vec<_> = xs.to_vec();
    let thr = [0.001f32; 8];
    let votes = fusion_kernels::SignVotes::new(c).unwrap();
    time("fused elected sum of 8, votes (f32)", 8 * n, &|| {
        let s = fusion_kernels::ties_elected_sum_delta(c, &ids, b, &thr, Some(&votes)).unwrap();
        c.release(s);
    });
    let s8 = fusion_kernels::ties_elected_sum_delta(c, &ids, b, &thr, None).unwrap();
    let counters = c.create(DType::U32, &[2], None).unwrap();
    time("fused merge of 8 (f32)", 8 * n, &|| {
        let m = sum_merge(&thr);
        let o = fusion_kernels::ties_merge_delta_scaled(c, s8, &ids, b, m, (counters, 0)).unwrap();
        c.release(o);
    });
    time("elect and merge of 8, one launch (f32)", 8 * n, &|| {
        let m = sum_merge(&thr);
        let o = fusion_kernels::ties_elect_merge_delta(c, &ids, b, m, Some(&votes), (counters, 0))
            .unwrap();
        c.release(o);
    });
    time("sign votes of S (separate launch)", n, &|| {
        votes.add(&[s8], &[0.0]).unwrap()
    });
    let bracket_words = 2 + 2 * 4096u64;
    let counts = c
        .create(DType::U32, &[8 * bracket_words as usize], None)
        .unwrap();
    let brackets: Vec<_> = (0..8)
        .map(|i| fusion_kernels::RadixBracket {
            lo: 0.004f32.to_bits(),
            hi: 0.004f32.to_bits() + 4096,
            offset: i * bracket_words,
        })
        .collect();
    time("bracket pass of 8 (f32)", 8 * n, &|| {
        fusion_kernels::radix_bracket_delta(c, counts, &ids, b, &brackets).unwrap()
    });
    let dirty = c.create(DType::U32, &[n.div_ceil(32)], None).unwrap();
    let tops: Vec<f32> = brackets.iter().map(|b| f32::from_bits(b.hi)).collect();
    time("bracket pass, elect and merge of 8 (f32)", 8 * n, &|| {
        let m = sum_merge(&tops);
        let pass = fusion_kernels::TiesBracketPass {
            brackets: &brackets,
            counts,
            dirty,
            dirty_at: 0,
        };
        let o =
            fusion_kernels::ties_bracket_merge_delta(c, &ids, b, m, pass, &votes, (counters, 0))
                .unwrap();
        c.release(o);
    });
    c.release(dirty);
    time("zeroed tensor", n, &|| {
        let t = c.create(DType::F32, &[n], None).unwrap();
        c.release(t);
    });
    for t in [s8, counters, counts] {
        c.release(t);
    }
    time("upload, then histogram", n, &|| {
        let t = c.create(DType::F32, &[n], Some(fine_bytes)).unwrap();
        fusion_kernels::radix_histogram_delta(c, Binding::write(hist), t, b, first, start).unwrap();
        c.release(t);
    });
    for t in xs.into_iter().chain([b, hist, s, out]) {
        c.release(t);
    }
}

/// TIES with `merge_func` sum, λ 0.3, majority +1, into f32, at `thresholds`.
fn sum_merge(thresholds: &[f32]) -> fusion_kernels::ScaledTiesMerge<'_> {
    fusion_kernels::ScaledTiesMerge {
        thresholds,
        majority: 1.0,
        merge: fusion_kernels::TiesMerge::Sum,
        lambda: 0.3,
        dtype: DType::F32,
    }
}

/// GFLOP/s of the product kernels on ViT-B/32 layer shapes at batch 32 (50 tokens x 32 images).
fn bench_gemm(c: &dyn Compute) {
    use fusion_kernels::nn::{self, Activation, Gemm, GemmEpilogue, GemmKernel};
    println!(
        "subgroup size: {:?}; cooperative matrices: {}",
        nn::subgroup_size(c),
        nn::cooperative_matrix_available(c)
    );
    let rows = 1600;
    for (what, n, k) in [
        ("q|k|v, out proj (768 -> 768)", 768, 768),
        ("fc1 (768 -> 3072)", 3072, 768),
        ("fc2 (3072 -> 768)", 768, 3072),
    ] {
        let x: Vec<f32> = (0..rows * k).map(|i| noise(i, 1)).collect();
        let w: Vec<f32> = (0..n * k).map(|i| noise(i, 2)).collect();
        let tx = nn::from_f32(c, &[rows, k], &x).unwrap();
        let tw = nn::from_f32(c, &[n, k], &w).unwrap();
        let ty = nn::zeros(c, &[rows, n]).unwrap();
        let tb = nn::zeros(c, &[n]).unwrap();
        let flops = 2.0 * (rows * n * k) as f64;
        let time = |f: &dyn Fn()| -> f64 {
            f();
            c.synchronize().unwrap();
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    c.synchronize().unwrap();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        println!("{rows} x {k} x {n}, {what}:");
        for kernel in GemmKernel::ALL
            .into_iter()
            .chain([GemmKernel::Cooperative])
            .filter(|k| k.supported(c))
        {
            let g = Gemm::dense(rows, n, k, false, true);
            let s = time(&|| nn::gemm_with(kernel, c, tx.id(), tw.id(), ty.id(), &g).unwrap());
            println!("  gemm {}: {:.2} GFLOP/s", kernel.name(), flops / s / 1e9);
            let epi = GemmEpilogue::linear(Some(tb.id()), Some(Activation::QuickGelu));
            let s = time(&|| {
                nn::gemm_epilogue_with(kernel, c, tx.id(), tw.id(), ty.id(), &g, &epi).unwrap()
            });
            println!(
                "  gemm {} + bias + quick_gelu: {:.2} GFLOP/s",
                kernel.name(),
                flops / s / 1e9
            );
        }
    }
}
