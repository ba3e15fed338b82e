//! The runtime on a real adapter (Mesa lavapipe in CI; `FUSION_DEVICE` picks another).

use std::sync::OnceLock;

use fusion_gpu::{list_adapters, DeviceChoice, GpuError, LimitClamp, Runtime, RuntimeOptions};
use fusion_plugin_api::{Binding, Compute, DType, ErrorKind, KernelCall};

fn choice() -> DeviceChoice {
    match std::env::var("FUSION_DEVICE") {
        Ok(s) => s.parse().expect("FUSION_DEVICE"),
        Err(_) => DeviceChoice::Cpu,
    }
}

fn open(options: RuntimeOptions) -> Runtime {
    Runtime::new(&choice(), options).unwrap_or_else(|e| {
        panic!(
            "GPU tests need a wgpu adapter; none could be opened for device `{}` \
             (FUSION_DEVICE, default cpu): {e}\n\
             Install Mesa lavapipe (apt-get install mesa-vulkan-drivers) or set FUSION_DEVICE.",
            choice()
        )
    })
}

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| open(RuntimeOptions::default()))
}

/// Options for both ways the host reaches tensor memory: through staging copies (real GPUs) and
/// mapped directly (CPU adapters; requested here, and reported by `unified_memory` where the
/// adapter can do it).
fn memory_modes() -> [(&'static str, RuntimeOptions); 2] {
    let with = |unified| RuntimeOptions {
        unified_memory: Some(unified),
        ..Default::default()
    };
    [("staged", with(false)), ("unified", with(true))]
}

/// A private runtime per memory mode, checked to be in that mode (unified only where the
/// adapter offers it: lavapipe does).
fn runtimes_by_memory() -> Vec<(&'static str, Runtime)> {
    memory_modes()
        .into_iter()
        .map(|(mode, options)| {
            let c = open(options);
            if mode == "staged" {
                assert!(!c.unified_memory());
            } else if c.adapter().device_type == "Cpu" {
                assert!(
                    c.unified_memory(),
                    "a CPU adapter maps its buffers directly"
                );
            }
            (mode, c)
        })
        .collect()
}

const ADD: &str = r#"
override BIAS: f32 = 0.0;
struct P { n: u32, scale: f32 }
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.n) { out[gid.x] = x[gid.x] * p.scale + BIAS; }
}
"#;

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(bytes)
}

fn uniforms(n: u32, scale: f32) -> Vec<u8> {
    [n.to_le_bytes(), scale.to_le_bytes()].concat()
}

#[test]
fn round_trips_bytes_of_every_size() {
    for (mode, c) in runtimes_by_memory() {
        round_trips_in(&c, mode);
    }
}

fn round_trips_in(c: &Runtime, mode: &str) {
    for (dtype, shape) in [
        (DType::F16, vec![3]),
        (DType::U8, vec![5]),
        (DType::F32, vec![2, 3]),
        (DType::F64, vec![1]),
    ] {
        let n: usize = shape.iter().product::<usize>() * dtype.size();
        let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
        let t = c.create(dtype, &shape, Some(&data)).unwrap();
        assert_eq!(c.read(t).unwrap(), data, "{mode}");
        assert_eq!(c.describe(t).unwrap(), (dtype, shape.clone()));
        c.release(t);
    }
    // Large uploads are copied by several threads in page-aligned pieces: an odd number of f16
    // elements (not a whole number of words or pages) must come back byte for byte.
    {
        let mut held = Vec::new();
        for k in 0..8u64 {
            let n = (9 << 20) / 2 + 3 + k as usize;
            let data: Vec<u8> = (0..2 * n as u64)
                .map(|i| ((i + k).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
                .collect();
            held.push((c.create(DType::F16, &[n], Some(&data)).unwrap(), data));
        }
        for (t, data) in held {
            assert!(
                c.read(t).unwrap() == data,
                "{mode}: a 9 MiB upload came back changed"
            );
            c.release(t);
        }
        // Again into the released (pooled) buffers, which a unified runtime maps anew.
        for k in 0..2u64 {
            let n = (9 << 20) / 2 + 3 + k as usize;
            let data: Vec<u8> = (0..2 * n as u64).map(|i| (i % 251) as u8).collect();
            let t = c.create(DType::F16, &[n], Some(&data)).unwrap();
            assert!(
                c.read(t).unwrap() == data,
                "{mode}: a re-used buffer's upload"
            );
            c.release(t);
        }
    }
    let empty = c.create(DType::F32, &[0], None).unwrap();
    assert!(c.read(empty).unwrap().is_empty());
    c.release(empty);
    let e = c.create(DType::F32, &[2], Some(&[0u8; 4])).unwrap_err();
    assert!(e.message().contains("expected 8 bytes, got 4"), "{e}");
}

#[test]
fn unaligned_writes_keep_neighbours() {
    for (mode, c) in runtimes_by_memory() {
        let t = c
            .create(DType::F16, &[5], Some(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
            .unwrap();
        c.write(t, 2, &[0xAA, 0xBB]).unwrap();
        c.write(t, 8, &[0xCC, 0xDD]).unwrap();
        // Element 3 sits in the word at byte 4: a read-back that does not start on an 8-byte
        // boundary.
        c.write(t, 6, &[0xEE, 0xFF]).unwrap();
        assert_eq!(
            c.read(t).unwrap(),
            vec![1, 2, 0xAA, 0xBB, 5, 6, 0xEE, 0xFF, 0xCC, 0xDD],
            "{mode}"
        );
        assert!(c.write(t, 9, &[0, 0]).is_err());
        c.release(t);
    }
}

#[test]
fn released_buffers_are_reused_and_cleared() {
    // Private runtimes, so other tests' allocations do not disturb the counts.
    for (_, c) in runtimes_by_memory() {
        reuses_and_clears(&c);
    }
}

fn reuses_and_clears(c: &Runtime) {
    let a = c
        .create(DType::F32, &[1000], Some(&vec![0xFFu8; 4000]))
        .unwrap();
    c.release(a);
    let before = c.pool_stats();
    let b = c.create(DType::F32, &[990], None).unwrap(); // same size class
    let after = c.pool_stats();
    assert_eq!(after.hits, before.hits + 1, "{after:?}");
    assert!(
        c.read(b).unwrap().iter().all(|&x| x == 0),
        "a reused buffer must be zeroed"
    );
    assert_eq!(c.live_tensors(), 1);
    c.release(b);
    c.release(b); // double release is ignored
    assert_eq!(c.live_tensors(), 0);
}

#[test]
fn runs_kernels_with_uniforms_and_constants_and_caches_pipelines() {
    let c = open(RuntimeOptions::default());
    let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let xt = c
        .create(DType::F32, &[100], Some(bytemuck::cast_slice(&x)))
        .unwrap();
    let out = c.create(DType::F32, &[100], None).unwrap();
    let bindings = [Binding::write(out), Binding::read(xt)];
    let u = uniforms(100, 2.0);
    let call = |bias: f64| KernelCall {
        label: "add",
        source: ADD,
        entry_point: "main",
        constants: if bias == 0.0 { &[] } else { &[("BIAS", 0.5)] },
        bindings: &bindings,
        uniforms: &u,
        workgroups: [2, 1, 1],
    };
    c.dispatch(&call(0.0)).unwrap();
    assert_eq!(
        f32s(&c.read(out).unwrap()),
        x.iter().map(|v| v * 2.0).collect::<Vec<_>>()
    );
    c.dispatch(&call(0.0)).unwrap();
    assert_eq!(c.cached_pipelines(), 1);
    c.dispatch(&call(0.5)).unwrap();
    assert_eq!(c.cached_pipelines(), 2);
    assert_eq!(f32s(&c.read(out).unwrap())[3], 6.5);
    // A sub-range binding sees only its slice.
    let bindings = [
        Binding::write(out).range(256, 64),
        Binding::read(xt).range(0, 64),
    ];
    c.dispatch(&KernelCall {
        bindings: &bindings,
        uniforms: &uniforms(16, 1.0),
        ..call(0.0)
    })
    .unwrap();
    let got = f32s(&c.read(out).unwrap());
    assert_eq!(&got[64..80], &x[0..16]);
    assert_eq!(got[63], 63.0 * 2.0 + 0.5);
    c.synchronize().unwrap();
}

/// A kernel may keep its uniform block at a fixed binding (here 0) and bind a varying number of
/// storage tensors after it: the host reads where the entry point's uniform block is declared and
/// puts the call's storage bindings in the other slots, in order. Two entry points of one source
/// use different storage counts around the same uniform block.
const UNIFORM_FIRST: &str = r#"
struct P { n: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.n) { out[gid.x] = x[gid.x] * p.scale; }
}
@compute @workgroup_size(64)
fn scale_add(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.n) { out[gid.x] = x[gid.x] * p.scale + y[gid.x]; }
}
"#;

#[test]
fn a_uniform_block_declared_first_binds_where_the_kernel_declares_it() {
    let c = open(RuntimeOptions::default());
    let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let y: Vec<f32> = (0..100).map(|i| 1000.0 - i as f32).collect();
    let xt = c
        .create(DType::F32, &[100], Some(bytemuck::cast_slice(&x)))
        .unwrap();
    let yt = c
        .create(DType::F32, &[100], Some(bytemuck::cast_slice(&y)))
        .unwrap();
    let out = c.create(DType::F32, &[100], None).unwrap();
    let u = uniforms(100, 3.0);
    c.dispatch(&KernelCall {
        label: "scale",
        source: UNIFORM_FIRST,
        entry_point: "scale",
        constants: &[],
        bindings: &[Binding::write(out), Binding::read(xt)],
        uniforms: &u,
        workgroups: [2, 1, 1],
    })
    .unwrap();
    assert_eq!(
        f32s(&c.read(out).unwrap()),
        x.iter().map(|v| v * 3.0).collect::<Vec<_>>()
    );
    c.dispatch(&KernelCall {
        label: "scale_add",
        source: UNIFORM_FIRST,
        entry_point: "scale_add",
        constants: &[],
        bindings: &[Binding::write(out), Binding::read(xt), Binding::read(yt)],
        uniforms: &u,
        workgroups: [2, 1, 1],
    })
    .unwrap();
    assert_eq!(
        f32s(&c.read(out).unwrap()),
        x.iter()
            .zip(&y)
            .map(|(a, b)| a * 3.0 + b)
            .collect::<Vec<_>>()
    );
}

/// An upload right after a release may not land in a buffer that a launch still reads: with
/// unified memory the pool hands out another buffer (or waits) while the device works.
#[test]
fn uploads_never_overwrite_a_buffer_a_pending_launch_reads() {
    for (mode, c) in runtimes_by_memory() {
        let n = 1usize << 21;
        let mut outs = Vec::new();
        for round in 0..6u32 {
            let x = c
                .create(
                    DType::F32,
                    &[n],
                    Some(bytemuck::cast_slice(&vec![round as f32; n])),
                )
                .unwrap();
            let out = c.create(DType::F32, &[n], None).unwrap();
            c.dispatch(&KernelCall {
                label: "add",
                source: ADD,
                entry_point: "main",
                constants: &[],
                bindings: &[Binding::write(out), Binding::read(x)],
                uniforms: &uniforms(n as u32, 1.0),
                workgroups: [(n as u32).div_ceil(64), 1, 1],
            })
            .unwrap();
            c.release(x);
            outs.push(out);
        }
        for (round, out) in outs.into_iter().enumerate() {
            let got = f32s(&c.read(out).unwrap());
            assert!(
                got.iter().all(|&v| v == round as f32),
                "{mode}: round {round} read another round's input"
            );
            c.release(out);
        }
    }
}

/// Launches are recorded and submitted in batches; writes, re-used buffers and read-backs must
/// still see them in call order.
#[test]
fn batched_launches_keep_call_order() {
    for (mode, c) in runtimes_by_memory() {
        keeps_call_order(&c, mode);
    }
}

fn keeps_call_order(c: &Runtime, mode: &str) {
    let n = 1000usize;
    let ones = vec![1.0f32; n];
    let twos = vec![2.0f32; n];
    let x = c
        .create(DType::F32, &[n], Some(bytemuck::cast_slice(&ones)))
        .unwrap();
    let y = c.create(DType::F32, &[n], None).unwrap();
    let add = |out, input, scale: f32| {
        c.dispatch(&KernelCall {
            label: "add",
            source: ADD,
            entry_point: "main",
            constants: &[],
            bindings: &[Binding::write(out), Binding::read(input)],
            uniforms: &uniforms(n as u32, scale),
            workgroups: [(n as u32).div_ceil(64), 1, 1],
        })
        .unwrap()
    };
    // y = 3x, then x is overwritten: the launch recorded before the write sees the old x.
    add(y, x, 3.0);
    c.write(x, 0, bytemuck::cast_slice(&twos)).unwrap();
    assert!(
        f32s(&c.read(y).unwrap()).iter().all(|&v| v == 3.0),
        "{mode}: y"
    );
    // y = 5x (x = 2), x released and its buffer re-used for new data: the launch still read 2s.
    add(y, x, 5.0);
    c.release(x);
    let z = c
        .create(DType::F32, &[n], Some(bytemuck::cast_slice(&ones)))
        .unwrap();
    assert!(
        f32s(&c.read(y).unwrap()).iter().all(|&v| v == 10.0),
        "{mode}: y"
    );
    // A zeroed tensor on a re-used buffer is cleared after the launches before it, not before:
    // w = 7z is recorded, z released and re-created zeroed, then w is read.
    let w = c.create(DType::F32, &[n], None).unwrap();
    add(w, z, 7.0);
    c.release(z);
    let zeros = c.create(DType::F32, &[n], None).unwrap();
    assert!(
        f32s(&c.read(w).unwrap()).iter().all(|&v| v == 7.0),
        "{mode}: w"
    );
    assert!(
        f32s(&c.read(zeros).unwrap()).iter().all(|&v| v == 0.0),
        "{mode}: zeros"
    );
    // Many launches in a row (past one batch) chain correctly: y = 2^k via y = 2y.
    let mut a = c
        .create(DType::F32, &[n], Some(bytemuck::cast_slice(&ones)))
        .unwrap();
    let mut b = c.create(DType::F32, &[n], None).unwrap();
    for _ in 0..600 {
        add(b, a, 1.0);
        std::mem::swap(&mut a, &mut b);
    }
    add(b, a, 2.0);
    assert!(
        f32s(&c.read(b).unwrap()).iter().all(|&v| v == 2.0),
        "{mode}: b"
    );
}

#[test]
fn errors_name_the_kernel_and_the_limit() {
    let c = rt();
    let a = c.create(DType::F32, &[100], None).unwrap();
    let b = c.create(DType::F32, &[100], None).unwrap();
    let base = KernelCall {
        label: "add",
        source: ADD,
        entry_point: "main",
        constants: &[],
        bindings: &[Binding::write(a), Binding::read(b)],
        uniforms: &uniforms(100, 1.0),
        workgroups: [2, 1, 1],
    };
    let bad_wgsl = c
        .dispatch(&KernelCall {
            label: "broken",
            source: "fn main( {",
            ..base
        })
        .unwrap_err();
    assert_eq!(bad_wgsl.kind, ErrorKind::Compute);
    assert!(bad_wgsl.message().contains("kernel `broken`"), "{bad_wgsl}");
    let max = c.limits().max_workgroups_per_dimension;
    let too_many = c
        .dispatch(&KernelCall {
            workgroups: [max + 1, 1, 1],
            ..base
        })
        .unwrap_err();
    assert!(too_many.message().contains(&max.to_string()), "{too_many}");
    let misaligned = [Binding::write(a).range(4, 64), Binding::read(b)];
    let e = c.dispatch(&KernelCall {
        bindings: &misaligned,
        ..base
    });
    if c.limits().min_storage_offset_alignment > 4 {
        assert!(e.unwrap_err().message().contains("alignment"));
    }
    let aliased = [Binding::write(a), Binding::read(a)];
    let e = c
        .dispatch(&KernelCall {
            bindings: &aliased,
            ..base
        })
        .unwrap_err();
    assert!(e.message().contains("bound again"), "{e}");
    let wrong_access = [Binding::read(a), Binding::read(b)];
    let e = c
        .dispatch(&KernelCall {
            bindings: &wrong_access,
            ..base
        })
        .unwrap_err();
    assert!(e.message().contains("kernel `add`"), "{e}");
    let no_entry = c
        .dispatch(&KernelCall {
            entry_point: "nope",
            ..base
        })
        .unwrap_err();
    assert!(no_entry.message().contains("nope"), "{no_entry}");
    c.release(a);
    c.release(b);
    let gone = c.read(a).unwrap_err();
    assert!(gone.message().contains("unknown GPU tensor"), "{gone}");
}

#[test]
fn clamped_limits_are_enforced() {
    let c = open(RuntimeOptions {
        clamp: LimitClamp {
            max_storage_binding_size: Some(1024),
            max_buffer_size: Some(1 << 20),
            max_workgroups_per_dimension: Some(4),
            max_storage_buffers_per_stage: Some(4),
            max_invocations_per_workgroup: Some(64),
            min_storage_offset_alignment: Some(256),
        },
        ..Default::default()
    });
    let l = c.limits();
    assert_eq!(l.max_storage_binding_size, 1024);
    assert_eq!(l.max_workgroups_per_dimension, 4);
    assert_eq!(l.max_storage_buffers_per_stage, 4);
    assert_eq!(l.max_invocations_per_workgroup, 64);
    assert_eq!(l.min_storage_offset_alignment, 256);
    let big = c.create(DType::F32, &[1000], None).unwrap();
    let small = c.create(DType::F32, &[16], None).unwrap();
    let e = c
        .dispatch(&KernelCall {
            label: "add",
            source: ADD,
            entry_point: "main",
            constants: &[],
            bindings: &[Binding::write(big), Binding::read(small)],
            uniforms: &uniforms(16, 1.0),
            workgroups: [1, 1, 1],
        })
        .unwrap_err();
    assert!(
        e.message().contains("max storage binding size of 1024"),
        "{e}"
    );
    let e = c.create(DType::F32, &[1 << 20], None).unwrap_err();
    assert!(e.message().contains("max buffer size"), "{e}");
}

#[test]
fn adapters_are_listed_and_chosen_by_name() {
    let all = list_adapters();
    assert!(!all.is_empty(), "no adapters found");
    let r = rt().adapter();
    assert!(all.iter().any(|a| a.name == r.name));
    assert!(r.max_storage_binding_size > 0 && r.max_workgroups_per_dimension > 0);
    assert!(!r.to_string().is_empty());
    match Runtime::new(
        &DeviceChoice::Name("no-such-adapter-xyz".into()),
        RuntimeOptions::default(),
    ) {
        Err(GpuError::NoAdapter { available, .. }) => {
            assert!(available.contains(&r.name), "{available}")
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a nonexistent adapter was opened"),
    }
    let by_name = Runtime::new(
        &DeviceChoice::Name(r.name.to_uppercase()),
        RuntimeOptions::default(),
    )
    .unwrap();
    assert_eq!(by_name.adapter().name, r.name);
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Runtime>();
    let c = rt();
    std::thread::scope(|s| {
        for i in 0..4u8 {
            s.spawn(move || {
                let data = vec![i; 64];
                let t = c.create(DType::U8, &[64], Some(&data)).unwrap();
                assert_eq!(c.read(t).unwrap(), data);
                c.release(t);
            });
        }
    });
}

#[test]
fn a_lost_device_is_reported() {
    let c = open(RuntimeOptions::default());
    let t = c.create(DType::F32, &[4], None).unwrap();
    c.device().destroy();
    // wgpu reports the loss of a destroyed device once its queue has drained, at the next poll.
    let _ = c.synchronize();
    let e = c.create(DType::F32, &[4], None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Compute);
    assert!(e.message().contains("device was lost"), "{e}");
    assert!(c.read(t).is_err());
    assert!(c.synchronize().is_err());
}
