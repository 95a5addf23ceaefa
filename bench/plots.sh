#!/bin/bash
# Regenerate the data files and SVG plots of docs/benchmarks.md in docs/img/, from a build
# directory's benchmarks and library:
#
#   bench/plots.sh BUILDDIR [timeline] [depth] [shared] [burst] [boost]
#
# With no part named, all of them (about a minute and a half on the reference 2-vCPU VM):
#   timeline  RSS over time through a burst, trim on / trim=off / fixed malloc'd stacks
#             (bench/rss_timeline.c, built here)            -> rss_timeline.svg, rss_timeline_*.dat
#   depth     ns per page of growth against depth, kernel / guard / mprotect / guard + double
#             (bench/fault_depth.c, built here)             -> fault_depth.svg, fault_depth.dat
#   shared    shared-mode switch cost against saved size, next to the private switch
#             (bench_shared --only switch)                  -> shared_switch.svg, shared_switch.dat
#   burst     bench_trim's burst: stack RSS over time, trim=off and default policy
#             (bench_trim --only burst)                     -> trim_burst.svg, trim_burst.csv
#   boost     Boost.Context's stack allocators next to ours (bench/boost_alloc.cpp, built here
#             when a C++ compiler and Boost.Context are found)  -> boost_alloc.txt
# Each part also keeps the program's own output ("name value unit" lines) as docs/img/<part>.txt.
# The standalone programs are compiled with $CC / $CXX (default cc, c++) against BUILDDIR's
# libdynstack.so and the source tree's include/. Needs gnuplot.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
	echo "usage: $0 BUILDDIR [timeline] [depth] [shared] [burst] [boost]" >&2
	exit 2
fi
build=$(cd "$1" && pwd)
shift
src=$(cd "$(dirname "$0")/.." && pwd)
img=$src/docs/img
parts=${*:-timeline depth shared burst boost}
cc=${CC:-cc}
cxx=${CXX:-c++}
command -v gnuplot >/dev/null || { echo "$0: gnuplot not found" >&2; exit 1; }
[ -e "$build/libdynstack.so" ] || { echo "$0: no libdynstack.so in $build" >&2; exit 1; }
mkdir -p "$img"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cflags=(-O2 -g -Wall -Wextra -I"$src/include" -I"$src/bench")
ldflags=(-L"$build" -ldynstack -Wl,-rpath,"$build")

note() { echo "plots.sh: $*" >&2; }
# The load average, kept with each part's output: these figures are wall-clock times.
load() { echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"; }
# Value of a "name value unit" line of a file.
val() { awk -v n="$2" '$1 == n { print $2; exit }' "$1"; }
# Value of a "# name value unit" line (the standalone programs' figures).
cval() { awk -v n="$2" '$1 == "#" && $2 == n { print $3; exit }' "$1"; }

svg_head() {
	cat <<EOF
set terminal svg size 900,520 dynamic font 'sans,12' background rgb 'white'
set output '$1'
set grid lc rgb '#dddddd'
set key top right box opaque
EOF
}

part_timeline() {
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
	local d=$img/rss_timeline
	gnuplot <<EOF
$(svg_head "$img/rss_timeline.svg")
set title "10,000 coroutines on 64 KiB stacks: all go 48 KiB deep in one tick, then yield shallow (a tick every 20 ms)"
set xlabel 'time (ms)'
set ylabel 'process RSS (MiB)'
set yrange [0:*]
plot '${d}_fixed.dat' using 1:(\$2/1024) with lines lw 2 lc rgb '#888888' title 'fixed 64 KiB malloc stacks (baseline)', \
     '${d}_notrim.dat' using 1:(\$2/1024) with lines lw 2 lc rgb '#d95f02' title 'libdynstack, trim=off', \
     '${d}_trim.dat' using 1:(\$2/1024) with lines lw 2 lc rgb '#1b9e77' title 'libdynstack, default policy (trim=yield:4)', \
     '${d}_trim.dat' using 1:(\$3/1024) with lines dt 2 lc rgb '#1b9e77' title '  its committed stack pages (nr\_dynamic\_stacks\_pages)'
EOF
}

part_depth() {
	note "depth: building bench/fault_depth.c"
	"$cc" "${cflags[@]}" "$src/bench/fault_depth.c" -o "$tmp/fault_depth" "${ldflags[@]}"
	note "depth: running"
	{
		load
		"$tmp/fault_depth"
	} >"$img/fault_depth.dat"
	grep '^# depth_' "$img/fault_depth.dat" | sed 's/^# //' >"$img/depth.txt"
	gnuplot <<EOF
$(svg_head "$img/fault_depth.svg")
set title 'Growing a stack page by page from its top: ns per page against depth'
set xlabel 'depth grown (pages of 4 KiB)'
set ylabel 'ns per page'
set logscale x 2
set logscale y
set format x '%.0f'
set key top right
plot '$img/fault_depth.dat' using 1:3 with linespoints lw 2 pt 7 lc rgb '#1b9e77' title 'guard backend, step=1 (default policy)', \
     '' using 1:4 with linespoints lw 2 pt 5 lc rgb '#7570b3' title 'mprotect backend, step=1', \
     '' using 1:5 with linespoints lw 2 pt 9 lc rgb '#e7298a' title 'guard backend, double', \
     '' using 1:2 with linespoints lw 2 pt 13 lc rgb '#888888' title 'kernel demand paging (baseline)'
EOF
}

part_shared() {
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
		echo "# libaco's published figures (README, c5d.large): bytes_copied ns_per_resume"
		sed -n 's/^# libaco: \([0-9.]*\) ns per resume at \([0-9]*\) B copied.*/\2 \1/p' "$f"
	} >"$img/shared_switch.dat"
	gnuplot <<EOF
$(svg_head "$img/shared_switch.svg")
set title 'Shared (copy) stacks: switch cost against the bytes saved per switch-out'
set xlabel 'bytes saved and restored per resume (each way)'
set ylabel 'ns per resume + yield pair'
set logscale xy
set key top left
plot '$img/shared_switch.dat' index 0 using 1:2 with linespoints lw 2 pt 7 lc rgb '#1b9e77' title 'shared, N round robin (2 copies per resume)', \
     '' index 0 using 1:3 with linespoints lw 2 pt 5 lc rgb '#888888' title 'private, one coroutine (the denominator)', \
     '' index 0 using 1:4 with linespoints lw 2 pt 9 lc rgb '#d95f02' title 'private, N round robin (cold)', \
     '' index 0 using 1:5 with linespoints lw 1 dt 2 pt 4 lc rgb '#7570b3' title 'shared, owner hit (no copy)', \
     '' index 1 using 1:2 with points pt 2 ps 1.5 lc rgb '#e7298a' title "libaco, its README's figures"
EOF
}

part_burst() {
	note "burst: bench_trim --only burst"
	{
		load
		(cd "$tmp" && "$build/bench/bench_trim" --only burst --csv "$img/trim_burst.csv" --no-plot)
	} >"$img/burst.txt"
	local limit
	limit=$(val "$img/burst.txt" burst_live_depth_limit)
	gnuplot <<EOF
$(svg_head "$img/trim_burst.svg")
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

part_boost() {
	if ! echo '#include <boost/context/fiber.hpp>' | "$cxx" -std=c++14 -x c++ -fsyntax-only - 2>/dev/null; then
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

for p in $parts; do
	case $p in
	timeline | depth | shared | burst | boost) "part_$p" ;;
	*)
		echo "$0: unknown part '$p'" >&2
		exit 2
		;;
	esac
done
note "done: $(ls "$img" | tr '\n' ' ')"
