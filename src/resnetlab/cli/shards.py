"""The shards verb: write any data set resnetlab reads as WebDataset tar shards.

    resnetlab shards photos/ shards/ --shard-size 1000    # shards/train-000000.tar, ..., classes.json
"""

from __future__ import annotations

import argparse
import json


def shards_parser(sub) -> None:
    shards = sub.add_parser("shards", help="write a data set as WebDataset tar shards",
                            description="Writes OUT/train-NNNNNN.tar, val-NNNNNN.tar and test-NNNNNN.tar (one per "
                                        "split the data has; a folder without one is split as train does) with "
                                        "records KEY.jpg or KEY.png (the original bytes; other formats as PNG) and "
                                        "KEY.cls (the class index; the training records in a random order, so that "
                                        "each shard mixes the classes) and KEY.json (the original file), and "
                                        "classes.json and classes.txt. `resnetlab "
                                        "train OUT` then trains on them. Prints a JSON summary.")
    shards.add_argument("data", help="image folder, CSV or built-in name")
    shards.add_argument("out", help="folder for the shards (new or empty)")
    shards.add_argument("--shard-size", type=int, default=1000, help="records per shard (default: 1000)")
    shards.add_argument("--val-split", type=float, default=0.1, help="as for train (default: 0.1)")
    shards.add_argument("--seed", type=int, default=0, help="as for train; also the training records' random order "
                                                             "across the shards, which mixes the classes (default: 0)")
    shards.add_argument("--data-root", default=None, help="folder of the built-in data sets' files")
    shards.add_argument("--follow-links", action="store_true", help="as for train: follow folder links out of DATA")


def shards_run(args: argparse.Namespace) -> int:
    from ..data.shards import write_shards
    from ..data.sources import open_data
    from ..log import logger

    source = open_data(args.data, val_split=args.val_split, seed=args.seed, data_root=args.data_root,
                       follow_links=args.follow_links)
    for note in source.notes:
        logger.info(note)
    summary = write_shards(source, args.out, args.shard_size, seed=args.seed)
    for name, split in summary.items():
        logger.info(f"{name}: {split['records']} records in {len(split['shards'])} shard(s)")
        for item in split["skipped"]:
            logger.warning(f"skipped {item['path']}: {item['reason']}")
    print(json.dumps({"out": args.out, "classes": source.classes, "splits": summary}, indent=2, ensure_ascii=False))
    return 1 if any(split["skipped"] for split in summary.values()) else 0
