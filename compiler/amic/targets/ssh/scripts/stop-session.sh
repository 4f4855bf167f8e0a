# shellcheck shell=sh
# Stop every process that carries AMIC_SESSION=$AMIC_STOP_TOKEN in its environment
# (SshConnection.stop_remote): TERM, then KILL what is left. By process, not by
# group: inside a PID namespace (containers, the tests' hosts) the group leader may
# be outside it, and every child of the command inherits the environment anyway.
pids() {
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" != "$$" ] || continue
        if tr '\0' '\n' 2>/dev/null <"$p/environ" | grep -qxF "AMIC_SESSION=$AMIC_STOP_TOKEN"; then
            echo "${p#/proc/}"
        fi
    done
}
for p in $(pids); do kill -s TERM "$p" 2>/dev/null; done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -n "$(pids)" ] || exit 0; sleep 0.2; done
for p in $(pids); do kill -s KILL "$p" 2>/dev/null; done
