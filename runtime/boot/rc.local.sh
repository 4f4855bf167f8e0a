#!/bin/sh
# amic boot hook for machines without systemd (OpenRC local.d, or called from rc.local).
/var/lib/amic/stage2/amic boot >/dev/console 2>&1 || :
