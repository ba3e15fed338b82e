#!/usr/bin/env bash
# The README's first command: install what this machine lacks, build, and run the demo.
#
#   bash tools/setup.sh [--no-demo] [--dry-run] [OVERRIDE]...
#
# What it installs, each only when missing:
#   - a Vulkan driver: Mesa's software one, lavapipe (apt: mesa-vulkan-drivers, libvulkan1), by
#     tools/install-vulkan.sh (on Debian 12 from bookworm-backports); root, through sudo unless
#     already root;
#   - a C compiler and linker, which Rust links with (apt: gcc, libc6-dev); root likewise;
#   - Rust (the stable toolchain, at least the workspace's rust-version) through rustup, into
#     ~/.cargo for this user, no root (curl and ca-certificates from apt first if curl is missing).
# Then `cargo build --release --locked` and the demo: the tiny CLIP models in demo/ merged by
# `method=ties_merging` (or the OVERRIDEs given, e.g. `method=task_arithmetic`) and scored on six
# held-out test sets, ending with the per-task table.
#
# --no-demo   install and build only (CI: .ci/run)
# --dry-run   print what would be installed and run, change nothing (no root needed)
set -euo pipefail
cd "$(dirname "$0")/.."

demo=true
dry_run=false
overrides=()
for arg in "$@"; do
  case "$arg" in
    --no-demo) demo=false ;;
    --dry-run) dry_run=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "setup: unknown option $arg (see bash tools/setup.sh --help)" >&2
      exit 2
      ;;
    *) overrides+=("$arg") ;;
  esac
done
if [ ${#overrides[@]} -eq 0 ]; then
  overrides=(method=ties_merging)
fi

say() { echo "setup: $*" >&2; }

# Run a command, or print it under --dry-run.
run() {
  if $dry_run; then
    echo "+ $*"
  else
    "$@"
  fi
}

# The rust-version the workspace asks for, e.g. 1.85.
need_rust=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n 1)

# The cargo to use: on PATH, else rustup's default place.
find_cargo() {
  if command -v cargo >/dev/null 2>&1; then
    command -v cargo
  elif [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "$HOME/.cargo/bin/cargo"
  fi
}

# Whether `cargo` ($1) is at least $need_rust.
new_enough() {
  local have
  have=$("$1" --version 2>/dev/null | sed -n 's/^cargo \([0-9][0-9.]*\).*/\1/p')
  [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$need_rust" "$have" | sort -V | head -n 1)" = "$need_rust" ]
}

# --- what is missing -----------------------------------------------------------------------
apt_packages=()
need_vulkan=false
if ! bash tools/install-vulkan.sh --check; then
  need_vulkan=true
  say "missing: a Vulkan driver; will install Mesa's lavapipe (mesa-vulkan-drivers, libvulkan1) with tools/install-vulkan.sh"
fi
if ! command -v cc >/dev/null 2>&1; then
  apt_packages+=(gcc libc6-dev)
  say "missing: a C compiler and linker (Rust links with cc); will install gcc, libc6-dev"
fi
cargo=$(find_cargo)
need_rustup=false
rustup=$(command -v rustup || { [ -x "$HOME/.cargo/bin/rustup" ] && echo "$HOME/.cargo/bin/rustup"; } || true)
if [ -z "$cargo" ]; then
  need_rustup=true
  say "missing: Rust; will install the stable toolchain with rustup into ~/.cargo (no root)"
elif ! new_enough "$cargo"; then
  need_rustup=true
  say "$("$cargo" --version) is older than this workspace's rust-version $need_rust; will install the stable toolchain with rustup into ~/.cargo (no root)"
fi
if $need_rustup && ! command -v curl >/dev/null 2>&1; then
  apt_packages+=(curl ca-certificates)
  say "missing: curl (to fetch rustup); will install curl, ca-certificates"
fi

# --- root, only for what apt installs ----------------------------------------------------------
sudo=()
if $need_vulkan || [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      say "installing system packages needs root: asking through sudo"
      sudo=(sudo)
    else
      say "installing system packages needs root, and sudo is not installed: run this as root once (bash tools/setup.sh), or install the packages named above yourself"
      exit 1
    fi
  fi
  if [ ${#apt_packages[@]} -gt 0 ] && ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here (not Debian/Ubuntu): install ${apt_packages[*]} with this system's package manager, then run this again"
    exit 1
  fi
fi

# --- install -------------------------------------------------------------------------------
if [ ${#apt_packages[@]} -gt 0 ]; then
  run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi
if $need_vulkan; then
  run "${sudo[@]}" bash tools/install-vulkan.sh
fi
build=("$cargo")
if $need_rustup; then
  if [ -n "$rustup" ]; then
    # rustup is there with an older default: add stable beside it and build with that, leaving
    # the user's default toolchain as it is.
    run "$rustup" toolchain install stable --profile minimal
    build=("$rustup" run stable cargo)
  else
    if $dry_run; then
      echo "+ curl --proto =https --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable"
    else
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --default-toolchain stable
    fi
    build=("$HOME/.cargo/bin/cargo")
  fi
fi
if ! $need_vulkan && [ ${#apt_packages[@]} -eq 0 ] && ! $need_rustup; then
  say "nothing to install"
fi

# --- build, then the demo --------------------------------------------------------------------
run "${build[@]}" build --release --locked
if $demo; then
  run target/release/fusion-host modelpool=CLIPVisionModelPool/demo \
    taskpool=CLIPVisionModelTaskPool/demo "${overrides[@]}"
fi
if $need_rustup && [ -z "$rustup" ]; then
  say "Rust is in ~/.cargo/bin: run '. ~/.cargo/env' (or open a new shell) before the tests"
fi
