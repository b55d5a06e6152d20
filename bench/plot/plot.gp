# Draws docs/benchmarks.png from local.dat and redis.dat (figures copied from docs/benchmarks.md).
# Run: gnuplot bench/plot/plot.gp   (from the repository root; Debian: apt-get install gnuplot-nox)
set terminal pngcairo size 1200,520 font "DejaVu Sans,10"
set output "docs/benchmarks.png"
set termoption noenhanced
set multiplot layout 1,2
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.7
set bmargin 4
set grid ytics
set yrange [0:*]
set xtics nomirror scale 0
unset key

set title "local:// — distinct random keys, 2 threads"
set ylabel "million lock + unlock / s"
plot "bench/plot/local.dat" using 2:xtic(1) linecolor rgb "#3b7dd8", \
     "" using 0:($2 + 0.8):(sprintf("%.2f", $2)) with labels notitle

set title "redis:// — lock + release pairs/s (PING: round trips/s), loopback"
set ylabel "thousand per second"
plot "bench/plot/redis.dat" using 2:xtic(1) linecolor rgb "#d8593b", \
     "" using 0:($2 + 1.8):(sprintf("%.1f", $2)) with labels notitle

unset multiplot
