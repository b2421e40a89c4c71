# Sourced by the podman checks (.ci/check-image, .ci/check-cdi-podman):
# makes sure podman, runc and the other Debian tools they name are
# installed, with apt-get from Debian's packages when missing. A tool that
# cannot be installed fails the step: it is never skipped.
#
# Facts of the CI machines: podman runs containers as root with runc (crun
# fails there: cgroups in hybrid mode), and runc needs explicit
# `--ulimit nofile=... --ulimit nproc=...`; no image registry is reachable.

# ensure_tools STEP COMMAND:PACKAGE... (a COMMAND of `-` checks only that
# the package is installed)
have() {
  case "${1%%:*}" in
    -) dpkg -s "${1#*:}" >/dev/null 2>&1 ;;
    *) command -v "${1%%:*}" >/dev/null 2>&1 ;;
  esac
}
ensure_tools() {
  local step=$1 missing=() spec
  shift
  [ "$(id -u)" = 0 ] || { echo "$step: podman runs containers here as root; run CI as root" >&2; exit 1; }
  for spec in "$@"; do
    have "$spec" || missing+=("${spec#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || { echo "$step: ${missing[*]} missing and no apt-get to install them" >&2; exit 1; }
    echo "$step: installing ${missing[*]} from Debian's packages"
    # The package lists of a fresh machine may be empty or stale.
    apt-get update -qq >/dev/null || { echo "$step: apt-get update failed" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { echo "$step: apt-get could not install ${missing[*]}" >&2; exit 1; }
  fi
  for spec in "$@"; do
    have "$spec" || { echo "$step: $spec is still missing after installing ${spec#*:}" >&2; exit 1; }
  done
}
