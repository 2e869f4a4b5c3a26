#!/usr/bin/env bash
# Builds the API image (Dockerfile: router, functions, JetStream source) with buildah,
# without any registry: the base image is Debian bookworm made with debootstrap.
#
#   make images                      # or: tools/images/build-api-image.sh
#
# 1. debootstrap bookworm (minbase + python3.11 + venv/pip + CA certificates) into a
#    root filesystem and commit it as the base image (reused while it exists;
#    REBUILD_BASE=1 makes it again);
# 2. build Dockerfile on it, passing the base's name and its digest (PYTHON_IMAGE,
#    PYTHON_IMAGE_DIGEST), so the API image is pinned to exactly that base; every Python
#    package comes from requirements/api.lock;
# 3. print what was built: image id, digest, size and build time.
#
# Needs root, buildah and debootstrap (apt-get install -y buildah debootstrap), and
# access to a Debian mirror and to PyPI. Settings (environment):
#   IMAGE            name of the API image    (localhost/cosyvoice-serving/cosyvoice-api:<version>)
#   BASE_IMAGE       name of the base image   (localhost/cosyvoice-serving/debian-python:bookworm)
#   DEBIAN_MIRROR    Debian mirror            (http://deb.debian.org/debian)
#   WORK_DIR         debootstrap scratch dir  (/var/tmp/cosyvoice-images)
#   STORAGE_DRIVER   buildah storage driver   (vfs: works inside containers, where overlay often does not)
#   ISOLATION        buildah isolation        (chroot: needs no user namespaces)
#   REBUILD_BASE     1 to debootstrap again even if the base image exists
#   BUILD_CA_BUNDLE  CA bundle pip trusts while building (default: this host's bundle, so a
#                    TLS-inspecting proxy's CA works); mounted into RUN steps only, never
#                    stored in the image. Empty to use the base image's own bundle.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "${REPO_ROOT}/pyproject.toml" | head -n 1)"
IMAGE="${IMAGE:-localhost/cosyvoice-serving/cosyvoice-api:${VERSION}}"
BASE_IMAGE="${BASE_IMAGE:-localhost/cosyvoice-serving/debian-python:bookworm}"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WORK_DIR="${WORK_DIR:-/var/tmp/cosyvoice-images}"
STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
ISOLATION="${ISOLATION:-chroot}"
REBUILD_BASE="${REBUILD_BASE:-0}"
BUILD_CA_BUNDLE="${BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"

# python3-venv brings ensurepip, so `python3 -m venv` gets pip; soundfile's wheel carries
# libsndfile and espeakng-loader's wheel carries espeak-ng, so no other library is needed.
BASE_PACKAGES=python3,python3-venv,ca-certificates

buildah_() { buildah --storage-driver "${STORAGE_DRIVER}" "$@"; }

for tool in buildah debootstrap; do
  command -v "${tool}" >/dev/null || {
    echo "error: ${tool} is missing (apt-get install -y buildah debootstrap)" >&2
    exit 1
  }
done
[ "$(id -u)" = 0 ] || { echo "error: debootstrap and buildah (chroot) need root" >&2; exit 1; }

started=$(date +%s)

build_base() {
  local rootfs="${WORK_DIR}/rootfs"
  rm -rf "${rootfs}" "${WORK_DIR}/rootfs.tar"
  mkdir -p "${rootfs}"
  echo "==> debootstrap ${DEBIAN_SUITE} (${BASE_PACKAGES}) from ${DEBIAN_MIRROR}"
  debootstrap --variant=minbase --include="${BASE_PACKAGES}" \
    "${DEBIAN_SUITE}" "${rootfs}" "${DEBIAN_MIRROR}"
  # What only the build host needed: package lists, caches, logs.
  rm -rf "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin \
    "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/log/* "${rootfs}"/tmp/*
  # Derived images run `python` and `pip` as in the python:*-slim images.
  ln -sf python3 "${rootfs}/usr/bin/python"
  tar --numeric-owner -C "${rootfs}" -cf "${WORK_DIR}/rootfs.tar" .
  rm -rf "${rootfs}"

  local container
  container=$(buildah_ from scratch)
  buildah_ add "${container}" "${WORK_DIR}/rootfs.tar" / >/dev/null
  buildah_ config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd /bin/bash \
    --label org.opencontainers.image.title="debian-python" \
    --label org.opencontainers.image.description="Debian ${DEBIAN_SUITE} minbase with python3 and venv (debootstrap)" \
    "${container}"
  buildah_ commit --rm "${container}" "${BASE_IMAGE}" >/dev/null
  rm -f "${WORK_DIR}/rootfs.tar"
}

mkdir -p "${WORK_DIR}"
if [ "${REBUILD_BASE}" = 1 ] || ! buildah_ inspect --type image "${BASE_IMAGE}" >/dev/null 2>&1; then
  build_base
else
  echo "==> reusing base image ${BASE_IMAGE} (REBUILD_BASE=1 makes it again)"
fi
base_done=$(date +%s)
base_digest=$(buildah_ inspect --type image --format '{{.FromImageDigest}}' "${BASE_IMAGE}")
echo "==> base ${BASE_IMAGE}@${base_digest}"

# pip vendors its own CA list: point it (and its build-isolation subprocesses) at the
# mounted bundle through a pip.conf that exists only while RUN steps execute.
trust=()
if [ -n "${BUILD_CA_BUNDLE}" ] && [ -r "${BUILD_CA_BUNDLE}" ]; then
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "${WORK_DIR}/pip.conf"
  trust=(--volume "$(readlink -f "${BUILD_CA_BUNDLE}"):/etc/ssl/certs/ca-certificates.crt:ro"
         --volume "${WORK_DIR}/pip.conf:/etc/pip.conf:ro")
fi

echo "==> building ${IMAGE} from Dockerfile"
buildah_ build \
  "${trust[@]}" \
  --isolation "${ISOLATION}" \
  --layers \
  --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" \
  --build-arg "PYTHON_IMAGE_DIGEST=${base_digest}" \
  --file "${REPO_ROOT}/Dockerfile" \
  --tag "${IMAGE}" \
  "${REPO_ROOT}"
finished=$(date +%s)

image_id=$(buildah_ inspect --type image --format '{{.FromImageID}}' "${IMAGE}")
image_digest=$(buildah_ inspect --type image --format '{{.FromImageDigest}}' "${IMAGE}")
size=$(buildah_ images --format '{{.Size}}' "${IMAGE}" | head -n 1)
base_size=$(buildah_ images --format '{{.Size}}' "${BASE_IMAGE}" | head -n 1)

cat <<EOF

Built ${IMAGE}
  image id      ${image_id}
  digest        ${image_digest}
  size          ${size}
  base          ${BASE_IMAGE}@${base_digest} (${base_size})
  build time    $((finished - started)) s (base $((base_done - started)) s, API image $((finished - base_done)) s)
Push it with: buildah --storage-driver ${STORAGE_DRIVER} push ${IMAGE} docker://REGISTRY/cosyvoice-serving/cosyvoice-api:${VERSION}
EOF
