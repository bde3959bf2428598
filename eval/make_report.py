#!/usr/bin/env python
"""The verification report: ``python eval/make_report.py results.json [more.json] --out DIR [--check-render]``.

Same as ``facekd report``: a self-contained ``report.html``, ``report.md`` and plot PNGs.
"""
import sys

from _cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
