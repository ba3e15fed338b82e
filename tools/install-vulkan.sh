#!/usr/bin/env bash
# Install a Vulkan driver for the tests and the demo where the machine has none: Mesa's software
# Vulkan (lavapipe). On Debian 12 (bookworm) it comes from bookworm-backports (Mesa 25), whose
# lavapipe runs the merge kernels 3.5-5x faster than bookworm's own Mesa 22.3 (BENCHMARKS.md);
# if backports cannot be reached, bookworm's package is installed instead. Elsewhere the
# distribution's mesa-vulkan-drivers. Needs root (apt-get). Does nothing when a lavapipe of
# Mesa 24 or newer is already installed.
#
# `--check` installs nothing and needs no root: exit 0 when nothing would be installed, 1 when
# something would (tools/setup.sh asks for root only then). FUSION_ICD_DIR and FUSION_OS_RELEASE
# point the checks at other files than /usr/share/vulkan/icd.d and /etc/os-release (for tests).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

icd_dir=${FUSION_ICD_DIR:-/usr/share/vulkan/icd.d}
os_release=${FUSION_OS_RELEASE:-/etc/os-release}
installed=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
have_icd=false
compgen -G "$icd_dir/lvp_icd*.json" >/dev/null && have_icd=true
# shellcheck source=/dev/null
codename=$(. "$os_release" 2>/dev/null && echo "${VERSION_CODENAME:-}")

if [ "${1:-}" = --check ]; then
  if $have_icd && [ -n "$installed" ] && dpkg --compare-versions "$installed" ge 24 2>/dev/null; then
    exit 0
  elif $have_icd && [ "$codename" != bookworm ]; then
    exit 0
  fi
  exit 1
fi

if $have_icd && [ -n "$installed" ] && dpkg --compare-versions "$installed" ge 24; then
  echo "install-vulkan: mesa-vulkan-drivers $installed is installed"
  exit 0
fi

if [ "$codename" = bookworm ]; then
  list=/etc/apt/sources.list.d/fusion-host-bookworm-backports.list
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$list"
  fi
  apt-get update -qq
  if apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      mesa-vulkan-drivers libvulkan1 >/dev/null; then
    echo "install-vulkan: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) (bookworm-backports)"
    exit 0
  fi
  echo "install-vulkan: bookworm-backports failed; installing bookworm's Mesa" >&2
elif $have_icd; then
  echo "install-vulkan: mesa-vulkan-drivers $installed is installed"
  exit 0
else
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >/dev/null
echo "install-vulkan: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
