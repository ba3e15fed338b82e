//! The README's first command, `tools/setup.sh`: what it decides to install on machines that lack
//! a Vulkan driver, a C linker or Rust, and that it asks for root only then. Each machine is a fake
//! PATH (a folder of stand-in commands beside links to the real coreutils), a fake home, a fake
//! Vulkan ICD folder and os-release; `--dry-run` prints the commands instead of running them.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use fusion_e2e::root;

/// What the fake machine has.
struct Machine {
    uid: u32,
    sudo: bool,
    cc: bool,
    curl: bool,
    /// `cargo --version` prints this, if cargo is installed.
    cargo: Option<&'static str>,
    rustup: bool,
    /// lavapipe's ICD file and the installed mesa-vulkan-drivers version.
    lavapipe: Option<&'static str>,
    codename: &'static str,
}

impl Machine {
    fn fresh() -> Machine {
        Machine {
            uid: 1000,
            sudo: true,
            cc: false,
            curl: true,
            cargo: None,
            rustup: false,
            lavapipe: None,
            codename: "bookworm",
        }
    }

    fn ready() -> Machine {
        Machine {
            uid: 1000,
            sudo: true,
            cc: true,
            curl: true,
            cargo: Some("cargo 1.90.0 (840b83a10 2025-07-30)"),
            rustup: false,
            lavapipe: Some("25.0.7-2~bpo12+1"),
            codename: "bookworm",
        }
    }
}

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run `bash tools/setup.sh --dry-run ARGS` on the fake machine: (exit code, stdout, stderr).
fn setup(m: &Machine, args: &[&str]) -> (i32, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let home = tmp.path().join("home");
    let icd = tmp.path().join("icd.d");
    for d in [&bin, &home, &icd] {
        std::fs::create_dir_all(d).unwrap();
    }
    // The real tools the script uses for text and paths.
    for tool in [
        "sed", "sort", "head", "dirname", "env", "cat", "grep", "bash",
    ] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    script(&bin, "id", &format!("echo {}", m.uid));
    script(&bin, "apt-get", "exit 0");
    if m.sudo {
        script(&bin, "sudo", "exec \"$@\"");
    }
    if m.cc {
        script(&bin, "cc", "exit 0");
    }
    if m.curl {
        script(&bin, "curl", "exit 0");
    }
    if let Some(v) = m.cargo {
        script(&bin, "cargo", &format!("echo '{v}'"));
    }
    if m.rustup {
        script(&bin, "rustup", "exit 0");
    }
    match m.lavapipe {
        Some(version) => {
            std::fs::write(icd.join("lvp_icd.x86_64.json"), "{}").unwrap();
            script(&bin, "dpkg-query", &format!("printf '%s' '{version}'"));
            std::os::unix::fs::symlink("/usr/bin/dpkg", bin.join("dpkg")).unwrap();
        }
        None => script(&bin, "dpkg-query", "exit 1"),
    }
    let os_release = tmp.path().join("os-release");
    std::fs::write(&os_release, format!("VERSION_CODENAME={}\n", m.codename)).unwrap();

    let out = Command::new("/bin/bash")
        .arg(root().join("tools/setup.sh"))
        .arg("--dry-run")
        .args(args)
        .env_clear()
        .env("PATH", &bin)
        .env("HOME", &home)
        .env("FUSION_ICD_DIR", &icd)
        .env("FUSION_OS_RELEASE", &os_release)
        .output()
        .unwrap();
    // Commands as a reader would type them: `cargo`, not `/tmp/.../bin/cargo`; `~` for home.
    let stdout = String::from_utf8_lossy(&out.stdout)
        .replace(&format!("{}/", bin.display()), "")
        .replace(&home.display().to_string(), "~");
    (
        out.status.code().unwrap_or(-1),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `+ ...` command lines of a dry run.
fn commands(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("+ "))
        .collect()
}

#[test]
fn a_fresh_machine_gets_vulkan_a_linker_and_rust_with_sudo_only_for_apt() {
    let (code, out, err) = setup(&Machine::fresh(), &[]);
    assert_eq!(code, 0, "{err}");
    let cmds = commands(&out);
    assert!(
        cmds.iter().any(|c| c.starts_with("sudo ")
            && c.contains("apt-get install")
            && c.contains("gcc libc6-dev")),
        "{out}"
    );
    assert!(cmds.contains(&"sudo bash tools/install-vulkan.sh"), "{out}");
    // Rust goes into the user's home, without root.
    let rust = cmds
        .iter()
        .find(|c| c.contains("sh.rustup.rs"))
        .expect(&out);
    assert!(!rust.starts_with("sudo"), "{rust}");
    let home = cmds
        .iter()
        .find(|c| c.contains(" build --release --locked"));
    assert!(
        home.is_some_and(|c| *c == "~/.cargo/bin/cargo build --release --locked"),
        "{out}"
    );
    // Then the demo, last.
    assert_eq!(
        cmds.last(),
        Some(&"target/release/fusion-host modelpool=CLIPVisionModelPool/demo taskpool=CLIPVisionModelTaskPool/demo method=ties_merging"),
        "{out}"
    );
    for what in ["Vulkan driver", "gcc, libc6-dev", "rustup", "needs root"] {
        assert!(err.contains(what), "{what}: {err}");
    }
}

#[test]
fn a_ready_machine_installs_nothing_and_never_asks_for_root() {
    let (code, out, err) = setup(&Machine::ready(), &["method=task_arithmetic"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        commands(&out),
        vec![
            "cargo build --release --locked",
            "target/release/fusion-host modelpool=CLIPVisionModelPool/demo taskpool=CLIPVisionModelTaskPool/demo method=task_arithmetic",
        ],
        "{out}"
    );
    assert!(err.contains("nothing to install"), "{err}");
    assert!(!out.contains("sudo") && !err.contains("root"), "{err}");
}

#[test]
fn only_what_is_missing_is_installed() {
    // Bookworm's own Mesa 22.3: install-vulkan.sh upgrades it from backports.
    let m = Machine {
        lavapipe: Some("22.3.6-1+deb12u1"),
        ..Machine::ready()
    };
    let (code, out, err) = setup(&m, &["--no-demo"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        commands(&out),
        vec![
            "sudo bash tools/install-vulkan.sh",
            "cargo build --release --locked"
        ],
        "{out}"
    );
    // Elsewhere an older lavapipe is kept.
    let m = Machine {
        lavapipe: Some("23.2.1-1ubuntu3"),
        codename: "jammy",
        ..Machine::ready()
    };
    let (code, out, err) = setup(&m, &["--no-demo"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        commands(&out),
        vec!["cargo build --release --locked"],
        "{out}"
    );

    // Rust older than the workspace's rust-version, with rustup: stable beside it, no root,
    // the user's default left alone.
    let m = Machine {
        cargo: Some("cargo 1.63.0"),
        rustup: true,
        ..Machine::ready()
    };
    let (code, out, err) = setup(&m, &["--no-demo"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        commands(&out),
        vec![
            "rustup toolchain install stable --profile minimal",
            "rustup run stable cargo build --release --locked"
        ],
        "{out}"
    );
    assert!(err.contains("older than"), "{err}");

    // As root: no sudo.
    let m = Machine {
        uid: 0,
        sudo: false,
        ..Machine::fresh()
    };
    let (code, out, err) = setup(&m, &["--no-demo"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        commands(&out).contains(&"bash tools/install-vulkan.sh"),
        "{out}"
    );
    assert!(!out.contains("sudo"), "{out}");
}

#[test]
fn without_root_or_sudo_it_names_what_to_install_and_stops() {
    let m = Machine {
        sudo: false,
        ..Machine::fresh()
    };
    let (code, out, err) = setup(&m, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(commands(&out).is_empty(), "{out}");
    assert!(
        err.contains("needs root, and sudo is not installed")
            && err.contains("mesa-vulkan-drivers"),
        "{err}"
    );
    let (code, _, err) = setup(&Machine::ready(), &["--bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown option --bogus"), "{err}");
}
