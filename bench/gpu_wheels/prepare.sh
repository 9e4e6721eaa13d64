#!/usr/bin/env bash
# Builds .whl/ (on Debian 12 x86-64, from the repository root): the wheels a bare GPU machine lacks, and a
# static ffmpeg.
#
#     bash bench/gpu_wheels/prepare.sh          for bench/gpu_check.sh (the demo chain); ffmpeg.xz as below
#     bash bench/gpu_wheels/prepare.sh speed    for bench/gpu_speed.sh only: 26 MB with ffmpeg.xz
set -euo pipefail
MODE=${1:-check}
P="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64
   --platform manylinux2010_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64"
download() { python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $P \
  -d /tmp/wheels_orig "$@"; }
rm -rf /tmp/wheels_orig && mkdir -p /tmp/wheels_orig .whl
# What the GPU image lacks to import the benches (diffusers, the frame decode's ffmpeg-python, the config's
# jsonschema), then what the demo chain needs besides (pyproject pins where it has them; pulp left out:
# without it Snakemake falls back to its greedy scheduler; boto3 left out: only S3 sources import it).
download diffusers==0.42.1 importlib_metadata==10.2.0 ffmpeg-python==0.2.0 future==1.0.0 jsonschema==4.26.0 \
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
if [ "$MODE" = check ]; then
  download annotated-types==0.8.0 argparse-dataclass==2.0.0 av==18.1.0 conda-inject==1.3.2 ConfigArgParse==1.9.0 \
    docutils==0.22.4 dpath==2.2.0 fastjsonschema==2.22.3 ftfy==6.3.1 gitdb==4.0.12 GitPython==3.2.1 \
    greenlet==3.5.6 humanfriendly==10.0 immutables==0.21 jupyter_core==5.9.1 lazy-importer==0.1.0 \
    nbformat==5.11.1 platformdirs==4.14.8 pydantic==2.14.4 pydantic_core==2.50.5 smart_open==7.7.1 smmap==5.0.3 \
    snakemake==9.27.1 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0 \
    snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0 \
    snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1 \
    SQLAlchemy==2.0.58 sqlmodel==0.0.37 tenacity==9.2.1 throttler==1.2.3 traitlets==5.16.1 \
    typing-inspection==0.4.5 wcwidth==0.9.4 yte==1.9.4 typing_extensions==4.16.0
  python3 -m pip wheel --no-deps -w /tmp/wheels_orig connection_pool==0.0.3   # sdist only on PyPI
fi
# Same members and RECORD, LZMA instead of deflate: 54 MB -> 43 MB to carry (pip reads either).
for f in /tmp/wheels_orig/*.whl; do python3 bench/gpu_wheels/repack_lzma.py "$f" ".whl/$(basename "$f")"; done
if [ "$MODE" = speed ]; then
  # ffmpeg.xz: the static ffmpeg 7.0.2 (libx264, lavfi sources, every filter the project uses) that the
  # imageio-ffmpeg wheel ships, 80 MB, 21 MB as xz.
  python3 -m pip download --no-deps --only-binary=:all: -d /tmp/wheels_orig imageio-ffmpeg==0.6.0
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]);
name = next(n for n in z.namelist() if "/binaries/ffmpeg-" in n); sys.stdout.buffer.write(z.read(name))' \
    /tmp/wheels_orig/imageio_ffmpeg-0.6.0-*.whl | xz -9e -T0 >.whl/ffmpeg.xz
  exit 0
fi
# ffmpeg.xz: a static ffmpeg 5.1.9 (Debian 12's source package) with Debian's libx264.a, only what
# the project runs: lavfi sources and filters, libx264 and rawvideo encoders, h264 and rawvideo
# decoders, mov/mp4/rawvideo, file and pipe. No ffprobe (the project probes with PyAV).
#   apt-get source --download-only ffmpeg; apt-get download libx264-dev; dpkg -x libx264-dev*.deb x264dev
#   (x264.pc pointed at x264dev), then in ffmpeg-5.1.9:
#   PKG_CONFIG_PATH=... ./configure --pkg-config-flags=--static --disable-everything --disable-autodetect
#     --disable-iconv --disable-doc --disable-debug --disable-network --disable-x86asm --disable-ffplay
#     --disable-ffprobe --disable-shared --enable-static --enable-gpl --enable-libx264 --extra-cflags=-Os
#     --extra-libs="-lpthread -lm -ldl" --extra-ldexeflags=-static --enable-protocol=file,pipe
#     --enable-demuxer=mov,rawvideo,h264,lavfi --enable-muxer=mp4,mov,rawvideo,null
#     --enable-decoder=h264,rawvideo --enable-encoder=libx264,rawvideo --enable-parser=h264
#     --enable-bsf=null,h264_mp4toannexb,extract_extradata --enable-indev=lavfi
#     --enable-filter=buffer,buffersink,abuffer,abuffersink,null,anull,format,aformat,scale,trim,atrim,
#       setpts,fps,setsar,setdar,crop,copy,aresample,testsrc2,testsrc,smptebars,mandelbrot,life,
#       rgbtestsrc,cellauto,color,drawbox,split,pad,transpose,hflip,vflip
#   make -j2; xz -9e -c ffmpeg > .whl/ffmpeg.xz
