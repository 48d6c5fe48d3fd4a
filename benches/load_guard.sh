# Sourced by the side-by-side benchmark scripts: a ratio is only a result on an idle
# machine. `guard_start` prints `uptime` and notes the CPU counters; `guard_end` prints
# `uptime` again and sets `idle=0` when the machine was busy:
#   - the 1-minute load average was above BENCH_MAX_LOAD (default 0.5) at the start, or
#   - other processes used more than BENCH_MAX_OTHER_CPU (default 0.10) of the machine's
#     CPU time during the run: all busy time (/proc/stat) minus this script's children.
# Timings are printed either way; the scripts leave the ratio columns out when idle=0.
# BENCH_FORCE=1 reports ratios anyway (say so next to the figures). BENCH_WAIT_IDLE=S waits
# up to S seconds for the load to fall below the limit before starting.

guard_cpu() { # busy jiffies of the whole machine
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

guard_children() { # sets guard_kids: CPU seconds used by this shell's finished children
  # `times` must run in this shell (not in a pipe's or $(...)'s subshell): through a file.
  local f
  f="$(mktemp)"
  times >"$f"
  guard_kids=$(awk 'NR == 2 { n = split($0, f, " "); s = 0; for (i = 1; i <= n; i++) { split(f[i], p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] }; print s }' "$f")
  rm -f "$f"
}

guard_busy() { # whether the 1-minute load average is above BENCH_MAX_LOAD
  awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v m="${BENCH_MAX_LOAD:-0.5}" 'BEGIN { exit !(l > m) }'
}

guard_start() {
  local load1 waited=0
  # BENCH_WAIT_IDLE=S: first wait up to S seconds for the load to settle (the scripts'
  # own setup, model generation and builds, raises it).
  while [ "$waited" -lt "${BENCH_WAIT_IDLE:-0}" ] && guard_busy; do
    sleep 10
    waited=$((waited + 10))
  done
  echo "uptime before: $(uptime)"
  idle=1
  load1="$(cut -d' ' -f1 /proc/loadavg)"
  if awk -v l="$load1" -v m="${BENCH_MAX_LOAD:-0.5}" 'BEGIN { exit !(l > m) }'; then
    idle=0
    echo "warning: 1-minute load average $load1 > ${BENCH_MAX_LOAD:-0.5}: the machine is busy; timings are printed but no ratios" >&2
  fi
  guard_t0="$(date +%s.%N)"
  guard_cpu0="$(guard_cpu)"
  guard_children
  guard_kids0="$guard_kids"
}

guard_end() {
  echo "uptime after: $(uptime)"
  local t1 cpu1 kids1 hz cores
  t1="$(date +%s.%N)"
  cpu1="$(guard_cpu)"
  guard_children
  kids1="$guard_kids"
  hz="$(getconf CLK_TCK)"
  cores="$(nproc)"
  local share
  share="$(awk -v c0="$guard_cpu0" -v c1="$cpu1" -v k0="$guard_kids0" -v k1="$kids1" -v hz="$hz" \
    -v t0="$guard_t0" -v t1="$t1" -v n="$cores" \
    'BEGIN { other = (c1 - c0) / hz - (k1 - k0); if (other < 0) other = 0; printf "%.3f", other / ((t1 - t0) * n) }')"
  echo "other processes' share of the CPU during the run: $share"
  if awk -v s="$share" -v m="${BENCH_MAX_OTHER_CPU:-0.10}" 'BEGIN { exit !(s > m) }'; then
    idle=0
    echo "warning: other processes used $share of the CPU during the run: timings are printed but no ratios" >&2
  fi
  if [ "${BENCH_FORCE:-0}" = 1 ] && [ "$idle" = 0 ]; then
    echo "warning: BENCH_FORCE=1: ratios reported from a busy machine" >&2
    idle=1
  fi
  export idle
}
