#!/usr/bin/env bash
# What the browser tests of tests/test_report.py and tests/test_report_hostile.py need: Debian's Chromium with its
# matching chromedriver (Selenium comes with the `dev` extra that `make test` installs). Browser downloads by
# playwright or selenium-manager cannot work here (only PyPI and Debian's apt are
# reachable), so the browser comes from apt and Selenium is pointed at it.
# Idempotent: skips apt when both binaries are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium chromium-driver
fi
/usr/bin/chromium --version
/usr/bin/chromedriver --version
