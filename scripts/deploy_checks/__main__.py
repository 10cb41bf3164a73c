"""``python -m deploy_checks <check> ARGS``: see ``--help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy_checks.dashboard import check_dashboard
from deploy_checks.monitoring import extract_rules
from deploy_checks.settings_env import check_settings
from deploy_checks.structure import check_structure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy_checks", description=__doc__)
    sub = parser.add_subparsers(dest="check", required=True)
    s = sub.add_parser("structure", help="structure and cross-references of one overlay")
    s.add_argument("rendered", type=Path)
    s.add_argument("overlay")
    s.add_argument("external", help="Secrets expected outside the overlay, comma-separated")
    s.add_argument("outdir", type=Path)
    e = sub.add_parser("settings", help="an env file of the structure check, by config")
    e.add_argument("envfile", type=Path)
    e.add_argument("overlay")
    r = sub.add_parser("rules", help="the base PrometheusRule's spec as rules files")
    r.add_argument("source", type=Path)
    r.add_argument("rules_out", type=Path)
    r.add_argument("test_out", type=Path)
    d = sub.add_parser("dashboard", help="the Grafana dashboard")
    d.add_argument("dashboard", type=Path)
    d.add_argument("rules_out", type=Path)
    d.add_argument("alert_rules", type=Path)
    a = parser.parse_args(argv)
    if a.check == "structure":
        return check_structure(a.rendered, a.overlay, a.external, a.outdir)
    if a.check == "settings":
        return check_settings(a.envfile, a.overlay)
    if a.check == "rules":
        return extract_rules(a.source, a.rules_out, a.test_out)
    return check_dashboard(a.dashboard, a.rules_out, a.alert_rules)


if __name__ == "__main__":
    sys.exit(main())
