"""``facekd report``: the HTML page and Markdown summary from ``facekd eval`` results JSON."""
from __future__ import annotations

import argparse

from facekd.commands import COMMANDS, Command


@COMMANDS.register("report")
class ReportCommand(Command):
    help = ("write the verification report (self-contained HTML + Markdown summary + plot PNGs) "
            "from one or more results JSON files of 'facekd eval'")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("results", nargs="+", help="results JSON file(s); models of several files are merged")
        parser.add_argument("--out", default="report", help="output directory (default: %(default)s)")
        parser.add_argument("--title", default="Face verification report")
        parser.add_argument("--check-render", action="store_true",
                            help="open the page in headless Chromium and fail unless it renders with all images")

    def run(self, args: argparse.Namespace) -> int:
        from facekd.evaluation.report import write_report
        from facekd.evaluation.runner import load_results, merge_results

        results = merge_results([load_results(path) for path in args.results])
        files = write_report(results, args.out, title=args.title)
        print(f"report: {files.html}\nsummary: {files.markdown}")
        if args.check_render:
            from facekd.evaluation.render_check import check_render

            check = check_render(files.html)
            print(f"render check: {check}")
            return 0 if check.ok else 1
        return 0
