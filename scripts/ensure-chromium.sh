#!/bin/sh
# Install Debian's Chromium for the browser tests (tests/serve, marker `browser`) when it is missing.
# Only as root and only when /usr/bin/chromium is absent; otherwise it does nothing (the browser tests
# then skip with a message). Never downloads a browser through Playwright.
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "ensure-chromium: /usr/bin/chromium is missing and we are not root; browser tests will be skipped" >&2
    exit 0
fi
echo "ensure-chromium: installing Debian chromium (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium
