"""Prepare Multi30k (task 1, raw) as plain line-aligned files under data/multi30k/.

Sources, in order: ``--from DIR``, else the ``MULTI30K_DIR`` variable, else the shared copy
beside the repository (``../shared/data/multi30k``) when it exists, else a download of the
official raw files from github.com/multi30k/dataset; every file is checked against a SHA-256
(see ``seq2seq_attn.multi30k``, which does the work).

    python scripts/prepare_multi30k.py --from ../shared/data/multi30k --pair de-en
    # -> data/multi30k/{train,val,test_2016_flickr,...}.{de,en}

Splits missing for a language (test_2017_* has no cs) are skipped with a note.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from seq2seq_attn.multi30k import BASE_URL, PrepareError, parse_pair, prepare, source_dir

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "data" / "multi30k"
SHARED_COPY = REPO.parent / "shared" / "data" / "multi30k"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source_dir", type=Path, help="local raw files (.gz)")
    parser.add_argument("--pair", default="de-en", help="SRC-TGT among en, de, fr, cs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--base-url", default=BASE_URL, help="where to download from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        src, tgt = parse_pair(args.pair)
        written = prepare(
            src, tgt, args.out, source_dir(args.source_dir, fallback=SHARED_COPY), args.base_url
        )
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
