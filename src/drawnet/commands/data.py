"""``drawnet data fetch NAME`` / ``drawnet data info NAME``: the data cache from the command line."""

from __future__ import annotations

import argparse
import time


def _fetch(args: argparse.Namespace) -> int:
    from ..data import catalog

    start = time.perf_counter()
    paths = catalog.fetch(args.name, root=args.root, source=args.source)
    seconds = time.perf_counter() - start
    for path in paths:
        print(path)
    print(f"{args.name}: fetched and verified in {seconds:.1f} s")
    return 0


def _split_sizes(name: str, root) -> dict[str, int]:
    from ..data import get_dataset

    return {split: len(get_dataset(name, split, root=root)) for split in ("train", "valid", "test")}


def _info(args: argparse.Namespace) -> int:
    from ..data import catalog

    info = catalog.describe(args.name, root=args.root)
    print(f"dataset: {info['name']}")
    print(f"cache:   {info['cache']}")
    for f in info["files"]:
        want = f["expected"]
        if not f["present"]:
            expected = f"{want['size']} bytes" if want["size"] else "size not pinned"
            print(f"  {f['path']}: missing ({expected}); run `drawnet data fetch {args.name}`")
            continue
        status = "verified" if f["verified"] else "DOES NOT MATCH the expected checksum"
        print(f"  {f['path']}: {f['size']} bytes, md5 {f['md5']}, sha256 {f['sha256']} ({status})")
        if not want["pinned"]:
            print("    no published checksum; checked against the sha256 recorded when it was first fetched")
    for d in info["derived"]:
        if d["present"]:
            print(f"  {d['path']}: {d['size']} bytes, sha256 {d['sha256']} (prepared)")
    complete = all(f["present"] and f["verified"] for f in info["files"])
    if complete and info["derived"] and not all(d["present"] for d in info["derived"]):
        complete = False
    if complete:
        sizes = _split_sizes(args.name, args.root)
        print("splits:  " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    else:
        print("splits:  (fetch the data set to see them)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="fetch data sets into the cache and show what is there",
        description="Data sets live in $DRAWNET_DATA (else ~/.cache/drawnet). Every raw file is verified "
        "(size and md5/sha256) before use; a fetched data set is never fetched again.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    fetch = sub.add_parser("fetch", help="download (or copy) and verify a data set's raw files")
    fetch.add_argument("name", help="data set: mnist, binarized_mnist, two_digit_mnist, cluttered_mnist, "
                       "fashion_mnist, binarized_fashion_mnist, cifar10, svhn, svhn_cropped")
    fetch.add_argument("--from", dest="source", metavar="DIR",
                       help="take the raw files from this folder (or file, for cifar10) instead of downloading")
    fetch.add_argument("--root", help="cache folder (default $DRAWNET_DATA, else ~/.cache/drawnet)")
    fetch.set_defaults(func=_fetch)

    info = sub.add_parser("info", help="cache location, file sizes and checksums, split sizes")
    info.add_argument("name", help="data set name (as for fetch)")
    info.add_argument("--root", help="cache folder (default $DRAWNET_DATA, else ~/.cache/drawnet)")
    info.set_defaults(func=_info)
