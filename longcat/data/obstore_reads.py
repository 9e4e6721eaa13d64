"""Ranged reads of S3 objects on obstore (Rust `object_store`): all ranges of one object in flight at once,
signed and sent on native threads, without the GIL.

`S3Source` reads its ranges here first. Whatever fails here is read again on boto3, which has the last
word: its retries, and its verdict on whether a failure is transient or permanent. So obstore only ever
makes a read faster, never a different answer. Keys that obstore's paths would not keep as they are
(empty, `.` or `..` segments, control characters) go to boto3 straight away.
"""

from __future__ import annotations

import os
import urllib.request
from datetime import timedelta
from urllib.parse import urlsplit

# obstore's own retries before boto3 reads the ranges again with its adaptive ones.
RETRIES = 2
# How long obstore keeps keys from boto3's chain before it asks again; boto3 renews expiring keys
# (assumed roles, SSO, web identity, instance roles) from 15 minutes before they lapse.
CREDENTIALS_TTL = timedelta(minutes=5)


def obstore_store(client, bucket: str, connect_timeout: float, read_timeout: float):
    """An obstore S3Store for `bucket` at `client`'s endpoint and region (path-style), signing with the
    credentials of boto3's standard chain; None where that chain finds none (boto3 then refuses too) and
    for an endpoint with a user or password in it (which the config refuses; obstore's signer fails on it
    in ways that do not reach Python as errors)."""
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    endpoint = client.meta.endpoint_url
    session = boto3.Session()
    if "@" in endpoint or session.get_credentials() is None:
        return None
    options = {
        "allow_http": endpoint.startswith("http://"),
        "connect_timeout": timedelta(seconds=connect_timeout),
        "timeout": timedelta(seconds=read_timeout),
    }
    # The proxy boto3 would take from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY).
    proxy = urllib.request.getproxies().get(urlsplit(endpoint).scheme)
    if proxy:
        options["proxy_url"] = proxy
        options["proxy_excludes"] = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    retries = {
        "max_retries": RETRIES,
        "retry_timeout": timedelta(seconds=read_timeout),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
            "base": 2,
        },
    }
    return S3Store(
        bucket,
        endpoint=endpoint,
        region=client.meta.region_name,
        virtual_hosted_style_request=False,
        client_options=options,
        retry_config=retries,
        credential_provider=Boto3CredentialProvider(session, ttl=CREDENTIALS_TTL),
    )


def keeps_key(full_key: str) -> bool:
    """Whether obstore reads the object of this very key: its paths drop a leading or trailing `/` (a
    different object) and refuse empty, `.` and `..` segments and control characters."""
    return full_key.isprintable() and all(part not in ("", ".", "..") for part in full_key.split("/"))


def read_ranges(store, full_key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each (start, end) range of the object, all requested at once; a range past the end of
    the object gives the bytes up to its end, as S3 does."""
    import obstore

    starts, ends = [start for start, _ in ranges], [end for _, end in ranges]
    return [bytes(part) for part in obstore.get_ranges(store, full_key, starts=starts, ends=ends, coalesce=0)]
