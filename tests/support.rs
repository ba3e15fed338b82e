//! Helpers for the end-to-end tests: find the built binary and plugins, build plugins outside the
//! workspace, run the host in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The cargo target folder in use.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The built `fusion-host` (debug profile). The README's test command builds it first.
pub fn host_bin() -> PathBuf {
    let exe = target_dir()
        .join("debug")
        .join(format!("fusion-host{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.is_file(),
        "{} does not exist: build the workspace first (cargo build --workspace)",
        exe.display()
    );
    exe
}

/// The shipped test data folder.
pub fn data() -> PathBuf {
    root().join("tests").join("data")
}

/// What one run of the host did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// What a finished [`host_command`] did.
    pub fn of(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Assert the run failed with `code`, printed one `error:` paragraph and no panic trace.
    pub fn assert_clean_failure(&self, code: i32) {
        assert_eq!(self.code, code, "exit code; stderr:\n{}", self.stderr);
        assert!(
            self.stderr.contains("error: "),
            "no error line:\n{}",
            self.stderr
        );
        // A plugin panic is reported as an error ("... panicked at src/lib.rs:10: ..."), which is
        // the point; a panic *trace* from a default hook looks like "thread 'main' panicked".
        for trace in ["thread '", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(
                !self.stderr.contains(trace),
                "panic trace in stderr:\n{}",
                self.stderr
            );
        }
    }

    /// The error paragraph.
    pub fn error(&self) -> &str {
        self.stderr.split("error: ").nth(1).unwrap_or("")
    }

    /// The digits of the first `field=` in the log; panics, with the log, where there is none.
    pub fn log_field(&self, field: &str) -> &str {
        self.stderr
            .split(&format!("{field}="))
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .unwrap_or_else(|| panic!("no {field} in the log:\n{}", self.stderr))
    }
}

/// Run the host with `args` in `cwd`; logs without colour, at the default level.
pub fn run_host(cwd: &Path, args: &[&str]) -> Run {
    run_host_env(cwd, args, &[])
}

/// Like [`run_host`] with extra environment variables.
pub fn run_host_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = host_command(cwd);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::of(cmd.output().expect("fusion-host runs"))
}

/// The host as [`run_host`] starts it (in `cwd`, logs without colour, at the default level),
/// for a test that needs more control: arguments that are not UTF-8, where stdout goes.
pub fn host_command(cwd: &Path) -> Command {
    let mut cmd = Command::new(host_bin());
    cmd.current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("FUSION_LOG")
        .env_remove("RUST_LOG");
    cmd.env_remove("FUSION_PLUGIN_PATH")
        .env_remove("FUSION_CONFIG_PATH");
    cmd
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Copy `src` (a plugin crate folder) to a temp folder outside the workspace, point its
/// `fusion-plugin-api` dependency at `api` (an absolute path), rename the package to `name`, and
/// build it with `cargo build` in a target folder shared by these tests. Returns a fresh folder
/// that holds only the built library.
pub fn build_external_plugin(src: &Path, name: &str, api: &Path) -> tempfile::TempDir {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().expect("temp dir");
    let crate_dir = work.path().join(name);
    copy_dir(src, &crate_dir);
    let manifest = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("fusion-plugin-api") {
            out.push_str(&format!(
                "fusion-plugin-api = {{ path = {:?} }}\n",
                api.display().to_string()
            ));
        } else if line.starts_with("name = ")
            && !out.contains("\nname = ")
            && !out.starts_with("name = ")
        {
            out.push_str(&format!("name = {name:?}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("\n[workspace]\n");
    std::fs::write(&manifest, out).expect("write manifest");
    // The workspace's lock file pins the same dependency versions, so nothing new is fetched.
    std::fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock"))
        .expect("copy Cargo.lock");
    let target = target_dir().join("ext-plugins");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--offline", "--quiet"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building {name} outside the workspace failed"
    );
    let lib_name = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        target.join("debug").join(&lib_name),
        dir.path().join(&lib_name),
    )
    .expect("copy library");
    dir
}

/// A copy of plugin-api with its version or a layout changed, for ABI-mismatch tests.
pub fn modified_plugin_api(version: Option<&str>, break_layout: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let api = dir.path().join("plugin-api");
    copy_dir(&root().join("plugin-api"), &api);
    let manifest = api.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&manifest).expect("manifest");
    // Standalone: concrete versions instead of `workspace = true`.
    text = text
        .replace("rust-version.workspace = true\n", "")
        .replace("license.workspace = true\n", "")
        .replace(
            "version.workspace = true",
            &format!(
                "version = {:?}",
                version.unwrap_or(env!("CARGO_PKG_VERSION"))
            ),
        )
        .replace("edition.workspace = true", "edition = \"2021\"")
        .replace("abi_stable.workspace = true", "abi_stable = \"=0.11.3\"")
        .replace(
            "serde.workspace = true",
            "serde = { version = \"1\", features = [\"derive\"] }",
        )
        .replace(
            "serde_json.workspace = true",
            "serde_json = { version = \"1\", features = [\"preserve_order\"] }",
        )
        .replace("tracing.workspace = true", "tracing = \"0.1\"")
        .replace("half.workspace = true", "half = \"2\"")
        .replace(
            "bytemuck.workspace = true",
            "bytemuck = { version = \"1\", features = [\"derive\"] }",
        );
    std::fs::write(&manifest, text).expect("write manifest");
    if break_layout {
        let abi = api.join("src/abi.rs");
        let src = std::fs::read_to_string(&abi).expect("abi.rs");
        let changed = src.replace(
            "    pub description: RString,\n    pub constructor: Constructor,",
            "    pub description: RString,\n    pub priority: u32,\n    pub constructor: Constructor,",
        )
        .replace("        description: description.into(),\n        constructor,", "        description: description.into(),\n        priority: 0,\n        constructor,");
        assert_ne!(src, changed, "the layout change did not apply");
        std::fs::write(&abi, changed).expect("write abi.rs");
    }
    dir
}

/// Copy a folder recursively, skipping `target/`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy file");
        }
    }
}

/// Read every tensor of a safetensors file as f32 values.
pub fn read_f32(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                    .collect(),
                safetensors::Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                other => panic!("unexpected dtype {other:?}"),
            };
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Write f32 tensors (name, shape, values) as a safetensors file.
pub fn write_f32(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .expect("tensor view");
            (name.to_string(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// Write a config tree: `files` are (relative path, contents).
pub fn write_configs(dir: &Path, files: &[(&str, &str)]) {
    for (rel, contents) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write config");
    }
}

/// A model pool config over the shipped merge-tiny models (absolute paths).
pub fn merge_tiny_pool() -> String {
    let models = data().join("merge-tiny").join("models");
    let mut s = String::from("_target_: fusion_bench.modelpool.BaseModelPool\nmodels:\n");
    for m in ["_pretrained_", "task_a", "task_b", "task_c", "task_d"] {
        s.push_str(&format!(
            "  {m}: {}\n",
            models.join(format!("{m}.safetensors")).display()
        ));
    }
    s
}
