"""Rewrite a wheel with LZMA-compressed members: same files, same RECORD, smaller to carry."""

import sys
import zipfile


def repack(source: str, destination: str) -> None:
    with (
        zipfile.ZipFile(source) as zin,
        zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_LZMA) as zout,
    ):
        for info in zin.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            member.external_attr = info.external_attr
            member.compress_type = zipfile.ZIP_LZMA
            zout.writestr(member, zin.read(info))


if __name__ == "__main__":
    repack(sys.argv[1], sys.argv[2])
