#!/bin/sh
# SPDX-License-Identifier: BSL-1.0
# check_man_page.sh KEYLOCK MAN_PAGE: every option that `KEYLOCK COMMAND --help` lists, for every
# command, and --version, is described in the manual page (written \-\-option in roff).
set -eu
keylock=$1
page=$2
status=0
for command in exec status release demo; do
    for option in $("$keylock" "$command" --help | grep -o -- '--[a-z][a-z-]*' | sort -u) --version; do
        escaped=$(printf '%s' "$option" | sed 's/-/\\\\-/g')
        if ! grep -q -- "$escaped" "$page"; then
            echo "$page: 'keylock $command' has $option, which the manual page does not describe" >&2
            status=1
        fi
    done
done
exit $status
