#!/bin/bash
# Measure again, and redraw, the data files and SVG plots of docs/benchmarks.md in docs/img/:
#
#   bench/plots.sh BUILDDIR [--replot] [timeline] [depth] [shared] [burst] [boost]
#
# With no part named, all of them (under a minute on the reference 2-vCPU VM):
#   timeline  RSS over time through a burst: the library with its default policy, with trim=off,
#             and fixed 64 KiB malloc'd stacks (bench/rss_timeline.c, built here)
#             -> rss_timeline.svg, rss_timeline_{trim,notrim,fixed}.dat, timeline.txt
#   depth     ns per page of growth against depth: kernel demand paging, the guard and mprotect
#             backends, guard under `double` (bench/fault_depth.c, built here)
#             -> fault_depth.svg, fault_depth.dat, depth.txt
#   shared    shared-mode switch cost against saved size, next to the private switch
#             (bench_shared --only switch) -> shared_switch.svg, shared_switch.dat, shared.txt
#   burst     bench_trim's burst: stack RSS over time, trim=off and the default policy
#             (bench_trim --only burst) -> trim_burst.svg, trim_burst.csv, burst.txt
#   boost     Boost.Context's stack allocators next to ours (bench/boost_alloc.cpp, built here
#             when a C++ compiler and Boost.Context are found) -> boost_alloc.txt
# The .txt files keep each program's own "name value unit" lines, with the load average at the
# time. --replot redraws the plots from the data files already in docs/img/ and runs nothing;
# PLOTS_FORMAT=png draws PNG (pngcairo) instead of SVG. The standalone programs are compiled with
# $CC / $CXX (default cc, c++) against BUILDDIR's libdynstack.so and the tree's include/.
# Needs gnuplot.
set -euo pipefail

usage() {
	echo "usage: $0 BUILDDIR [--replot] [timeline] [depth] [shared] [burst] [boost]" >&2
	exit 2
}
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
	usage
fi
build=$(cd "$1" && pwd)
shift
replot=0
if [ "${1:-}" = --replot ]; then
	replot=1
	shift
fi
src=$(cd "$(dirname "$0")/.." && pwd)
img=$src/docs/img
parts=${*:-timeline depth shared burst boost}
cc=${CC:-cc}
cxx=${CXX:-c++}
fmt=${PLOTS_FORMAT:-svg}
command -v gnuplot >/dev/null || { echo "$0: gnuplot not found" >&2; exit 1; }
[ -e "$build/libdynstack.so" ] || { echo "$0: no libdynstack.so in $build" >&2; exit 1; }
mkdir -p "$img"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cflags=(-O2 -g -Wall -Wextra -I"$src/include" -I"$src/bench")
ldflags=(-L"$build" -ldynstack "-Wl,-rpath,$build")

note() { echo "plots.sh: $*" >&2; }
# The load average, kept with each part's output: these figures are wall-clock times.
load() { echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"; }
# Value of a "name value unit" line of a file.
val() { awk -v n="$2" '$1 == n { print $2; exit }' "$1"; }

# The head of every plot: terminal, output file (name.svg, or name.png), grid and key.
plot_head() {
	if [ "$fmt" = png ]; then
		echo "set terminal pngcairo size 900,520 font 'sans,10' background rgb 'white'"
		echo "set output '$img/$1.png'"
	else
		echo "set terminal svg size 900,520 dynamic font 'sans,12' background rgb 'white'"
		echo "set output '$img/$1.svg'"
	fi
	echo "set grid lc rgb '#dddddd'"
	echo "set key top right box opaque"
}

# ---- timeline
run_timeline() {
	note "timeline: building bench/rss_timeline.c"
	"$cc" "${cflags[@]}" "$src/bench/rss_timeline.c" -o "$tmp/rss_timeline" "${ldflags[@]}"
	local args=(--coros 10000 --stack 64k --deep 48k --tick 20 --before 5 --after 40 --sample 5)
	{
		load
		echo "# rss_timeline ${args[*]} --mode trim|notrim|fixed"
	} >"$img/timeline.txt"
	for m in trim notrim fixed; do
		note "timeline: --mode $m"
		"$tmp/rss_timeline" "${args[@]}" --mode "$m" >"$img/rss_timeline_$m.dat"
		grep '^# timeline_' "$img/rss_timeline_$m.dat" | sed 's/^# //' >>"$img/timeline.txt"
	done
}
plot_timeline() {
	local d=$img/rss_timeline
	gnuplot <<EOF
$(plot_head rss_timeline)
set title "10,000 coroutines on 64 KiB stacks: all go 48 KiB deep in one tick, then yield shallow (a tick every 20 ms)"
set xlabel 'time (ms)'
set ylabel 'process RSS (MiB)'
set yrange [0:*]
set key at graph 0.98, graph 0.62 right
plot '${d}_fixed.dat' using 1:(\$2/1024) with lines lw 2 lc rgb '#888888' title 'fixed 64 KiB malloc stacks', \
     '${d}_notrim.dat' using 1:(\$2/1024) with lines lw 2 lc rgb '#d95f02' title 'libdynstack, trim=off', \
     '${d}_trim.dat' using 1:(\$2/1024) with lines lw 2 lc rgb '#1b9e77' title 'libdynstack, default (trim=yield:4)', \
     '${d}_trim.dat' using 1:(\$3/1024) with lines dt 2 lc rgb '#1b9e77' title '  its committed stack pages'
EOF
}

# ---- depth
run_depth() {
	note "depth: building bench/fault_depth.c"
	"$cc" "${cflags[@]}" "$src/bench/fault_depth.c" -o "$tmp/fault_depth" "${ldflags[@]}"
	note "depth: running"
	{
		load
		"$tmp/fault_depth"
	} >"$img/fault_depth.dat"
	{
		head -1 "$img/fault_depth.dat"
		grep '^# depth_' "$img/fault_depth.dat" | sed 's/^# //'
	} >"$img/depth.txt"
}
plot_depth() {
	gnuplot <<EOF
$(plot_head fault_depth)
set title 'Growing a stack page by page from its top: CPU time per page against depth'
set xlabel 'depth grown (pages of 4 KiB)'
set ylabel 'ns per page (thread CPU time)'
set logscale x 2
set logscale y
set format x '%.0f'
plot '$img/fault_depth.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '#1b9e77' title 'guard backend, step=1 (default policy)', \
     '' using 1:4 with linespoints lw 2 pt 5 lc rgb '#7570b3' title 'mprotect backend, step=1', \
     '' using 1:5 with linespoints lw 2 pt 9 lc rgb '#e7298a' title 'guard backend, double', \
     '' using 1:2 with linespoints lw 2 pt 13 lc rgb '#888888' title 'kernel demand paging (baseline)'
EOF
}

# ---- shared
run_shared() {
	note "shared: bench_shared --only switch"
	{
		load
		"$build/bench/bench_shared" --only switch
	} >"$img/shared.txt"
	local f=$img/shared.txt
	{
		echo "# saved_bytes shared private_hot private_cold owner_hit (ns per resume+yield pair; from shared.txt)"
		for l in 8B 256B 1KiB 8KiB; do
			echo "$(val "$f" shared_saved_bytes_$l) $(val "$f" shared_switch_$l)" \
				"$(val "$f" private_hot_switch_$l) $(val "$f" private_cold_switch_$l)" \
				"$(val "$f" shared_owner_hit_switch_$l)"
		done
		echo
		echo
		echo "# libaco's published figures (its README, c5d.large): bytes_copied ns_per_resume"
		sed -n 's/^# libaco: \([0-9.]*\) ns per resume at \([0-9]*\) B copied.*/\2 \1/p' "$f"
	} >"$img/shared_switch.dat"
}
plot_shared() {
	gnuplot <<EOF
$(plot_head shared_switch)
set title 'Shared (copy) stacks: switch cost against the bytes saved per switch-out'
set xlabel 'bytes saved and restored per resume (each way)'
set ylabel 'ns per resume + yield pair'
set logscale xy
set xrange [4:16384]
set key top left
plot '$img/shared_switch.dat' index 0 using 1:2 with linespoints lw 2 pt 7 lc rgb '#1b9e77' title 'shared, N round robin (2 copies per resume)', \
     '' index 0 using 1:3 with linespoints lw 2 pt 5 lc rgb '#888888' title 'private, one coroutine (the denominator)', \
     '' index 0 using 1:4 with linespoints lw 2 pt 9 lc rgb '#d95f02' title 'private, N round robin (cold)', \
     '' index 0 using 1:5 with linespoints lw 1 dt 2 pt 4 lc rgb '#7570b3' title 'shared, owner hit (no copy)', \
     '' index 1 using 1:2 with points pt 2 ps 1.5 lc rgb '#e7298a' title "libaco's shared stacks (its README, another machine)"
EOF
}

# ---- burst
run_burst() {
	note "burst: bench_trim --only burst"
	{
		load
		(cd "$tmp" && "$build/bench/bench_trim" --only burst --csv "$img/trim_burst.csv" --no-plot)
	} >"$img/burst.txt"
}
plot_burst() {
	local limit
	limit=$(val "$img/burst.txt" burst_live_depth_limit)
	gnuplot <<EOF
$(plot_head trim_burst)
set datafile separator ','
set title 'bench\_trim burst: 10,000 coroutines on 256 KiB stacks reach 200 KiB once, then yield shallow'
set xlabel 'time since the burst began (ms)'
set ylabel 'resident stack memory (MiB, mincore)'
set logscale y
set yrange [10:*]
plot '$img/trim_burst.csv' using 2:(strcol(1) eq 'off' ? \$7/1024 : NaN) with linespoints lw 2 pt 7 ps 0.5 lc rgb '#d95f02' title 'trim=off', \
     '' using 2:(strcol(1) eq 'on' ? \$7/1024 : NaN) with linespoints lw 2 pt 7 ps 0.5 lc rgb '#1b9e77' title 'default policy (trim=yield:4)', \
     $limit with lines dt 2 lc rgb '#888888' title 'live-depth limit ($limit MiB)'
EOF
}

# ---- boost (no plot: a table in docs/benchmarks.md and docs/integration.md)
run_boost() {
	if ! echo '#include <boost/context/fiber.hpp>' |
		"$cxx" -std=c++14 -x c++ -fsyntax-only - 2>/dev/null; then
		note "boost: no C++ compiler or no Boost.Context headers: skipped"
		return
	fi
	note "boost: building bench/boost_alloc.cpp"
	"$cxx" -std=c++14 "${cflags[@]}" "$src/bench/boost_alloc.cpp" -o "$tmp/boost_alloc" \
		"${ldflags[@]}" -lboost_context
	note "boost: running"
	{
		load
		"$tmp/boost_alloc"
	} >"$img/boost_alloc.txt"
}
plot_boost() { :; }

for p in $parts; do
	case $p in
	timeline | depth | shared | burst | boost)
		[ $replot = 1 ] || "run_$p"
		"plot_$p"
		;;
	*) usage ;;
	esac
done
note "done: files in $img"
