#!/usr/bin/env bash
# Host discovery for tests/test_elastic.py (horovodrun --host-discovery-script).
#
# Two "hosts" that are both this machine, one slot each: localhost always,
# 127.0.0.1 unless training has dropped it. Training (tests/workers/elastic_worker.py,
# rank 0) drives the schedule with marker files in $HVDSPAR_ELASTIC_DIR:
#   drop  -> 127.0.0.1 leaves;  add -> it comes back (add wins over drop).
# A test that starts with one host creates "drop" before launching.
dir="${HVDSPAR_ELASTIC_DIR:?HVDSPAR_ELASTIC_DIR is not set}"
echo "localhost:1"
if [ ! -e "$dir/drop" ] || [ -e "$dir/add" ]; then
    echo "127.0.0.1:1"
fi
