#!/usr/bin/env bash
# `make setup`: bubblewrap is the MLE sandbox's strong path. Install it when it is missing and
# we are root with apt-get (CI, fresh containers); otherwise say so once and carry on: solutions
# then run under the unshare fallback, which records what it does not cover. Idempotent, quiet.
set -u
command -v bwrap >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }; then
    exit 0
  fi
  echo "note: could not install bubblewrap; MLE solutions will run under the unshare fallback" >&2
else
  echo "note: bubblewrap (bwrap) is not installed; install the 'bubblewrap' package for the" \
    "strong MLE sandbox (without it solutions run under the recorded unshare fallback)" >&2
fi
exit 0
