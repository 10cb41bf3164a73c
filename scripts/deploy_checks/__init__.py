"""The Python half of ``scripts/check-deploy.sh``: checks on the rendered Kubernetes
manifests, the settings they give creditgate, the Prometheus rules and the Grafana
dashboard. Run as ``python -m deploy_checks <check> ...`` with ``scripts/`` on the path;
each check prints ``ok``/``FAIL`` lines and exits non-zero on a failure."""
