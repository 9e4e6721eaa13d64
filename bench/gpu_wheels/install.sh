# Sourced by bench/gpu_check.sh and bench/gpu_speed.sh on the bare GPU machine:
#     install_carried REPO SITE
# installs the wheels of REPO/.whl (bench/gpu_wheels/prepare.sh builds it) into SITE, unpacks the static
# ffmpeg into SITE/bin, and puts a `python` there that is the interpreter holding PyTorch (jobs run
# `python -m ...` from PATH). Returns non-zero when any of it fails.
install_carried() {
    local repo=$1 site=$2
    (
        set -e
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$repo"/.whl/*.whl
        mkdir -p "$site/bin"
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$repo/.whl/ffmpeg.xz" "$site/bin/ffmpeg"
        chmod +x "$site/bin/ffmpeg"
        printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >"$site/bin/python"
        chmod +x "$site/bin/python"
    )
}
