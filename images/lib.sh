# Shared by the image build scripts (images/*/build): options, wheel resolution for the
# image's Python, and a build cached by recipe. Source it after setting NAME (for messages).
#
# Each build script passes its own usage text to `parse_options` and then calls
# `build_recipe` with the image's names; the recipe hash covers the Dockerfile, the build
# script, this file and the resolved wheel names, so a rerun with nothing changed only
# re-points the main tag ("up to date").

# Wheels for the image's Python (bookworm: CPython 3.11, glibc 2.36), whatever Python runs pip:
# every manylinux tag that glibc 2.36 satisfies.
PIP_PLATFORM=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for glibc_minor in $(seq 5 36); do PIP_PLATFORM+=(--platform "manylinux_2_${glibc_minor}_x86_64"); done

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; }

image_exists() { "$engine" image inspect "$1" >/dev/null 2>&1; }

short_hash() { sha256sum | cut -c1-12; }

# Sets engine (docker | podman), name_prefix ("" | localhost/) and force (yes | no).
parse_options() {
    engine=docker
    name_prefix=""
    force=no
    while (($#)); do
        case "$1" in
            --engine-host) export DOCKER_HOST="${2:?--engine-host needs a URL}"; shift ;;
            --engine-host=*) export DOCKER_HOST="${1#*=}" ;;
            --podman) engine=podman; name_prefix=localhost/ ;;
            --force) force=yes ;;
            -h | --help) usage; exit 0 ;;
            *) log "unknown option $1"; usage >&2; exit 2 ;;
        esac
        shift
    done
    command -v "$engine" >/dev/null || { log "$engine CLI not found"; exit 1; }
    if ! "$engine" info >/dev/null 2>&1; then
        log "no $engine engine answers${DOCKER_HOST:+ at $DOCKER_HOST}: start one (.ci/engine-up)"
        exit 1
    fi
}

# pip download REQUIREMENT... into DEST for the image's Python.
download_wheels() {
    local dest="$1"
    shift
    log "resolving wheels: $*"
    python3 -m pip download --quiet --disable-pip-version-check "${PIP_PLATFORM[@]}" \
        --dest "$dest" "$@" 2> >(grep -v '^WARNING: Location' >&2)
}

# The recipe hash of a build context: its Dockerfile, the calling script, this file and the
# names of the wheels in CONTEXT/wheels.
recipe_hash() {
    local context="$1"
    {
        cat "$context/Dockerfile" "$0" "${BASH_SOURCE[0]}"
        ls "$context/wheels" | LC_ALL=C sort
    } | short_hash
}

# build_recipe CONTEXT IMAGE REPOSITORY RECIPE [--build-arg K=V ...]
# Build CONTEXT as IMAGE and REPOSITORY:recipe-RECIPE unless that tag exists (then only tag
# IMAGE); drop the install stage and older recipe tags. Returns 1 when it was up to date.
build_recipe() {
    local context="$1" image="$2" repository="$3" recipe="$4"
    shift 4
    local recipe_image="$repository:recipe-$recipe"
    if [[ $force == no ]] && image_exists "$recipe_image"; then
        "$engine" tag "$recipe_image" "$image"
        log "image $image up to date (recipe $recipe)"
        return 1
    fi
    log "building $image (recipe $recipe)"
    # The legacy builder is enough here (no BuildKit features) and is what docker.io ships.
    if ! DOCKER_BUILDKIT=0 "$engine" build --network none "$@" \
        --label "warmer.recipe=$recipe" -t "$image" -t "$recipe_image" "$context" \
        >"$context.build.log" 2>&1; then
        log "$engine build failed; last lines of its log:"
        tail -n 30 "$context.build.log" >&2
        exit 1
    fi
    "$engine" image prune --force --filter label=warmer.build-stage=install >/dev/null
    # Older recipes' tags would keep their images alive: drop them.
    "$engine" images --format '{{.Repository}}:{{.Tag}}' "$repository" |
        grep ':recipe-' | grep -vxF "$recipe_image" | xargs -r "$engine" rmi >/dev/null || true
    return 0
}
