// Command benchsummary reads `go test -bench` output (make bench's
// bin/bench.txt) and prints the performance summary: one row per measure
// of issue 20, each with its value, the baseline measured in the same
// run, their ratio and the target.
//
//	go run ./integration/cmd/benchsummary bin/bench.txt
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// row is one measure: a benchmark's metrics for the value and the
// baseline (empty when the measure is absolute), how to form the ratio,
// and the target.
type row struct {
	measure   string
	bench     string
	value     string // metric
	baseline  string // metric, or ""
	ratio     string // metric holding the ratio, or "" for value/baseline
	unit      string
	target    string
	targetVal float64
	atMost    bool // the target bounds the ratio (or value) from above
	onValue   bool // the target is on the value, not the ratio
	// also is a second figure shown after the value: a metric of
	// alsoBench (bench when empty).
	also, alsoBench string
}

var rows = []row{
	{measure: "pod start p50 (RunPodSandbox → first ExecSync) ÷ bare qemu boot to the agent's first line", bench: "BenchmarkPodStart", value: "pod-p50-ms", baseline: "bare-p50-ms", ratio: "ratio", unit: "ms", target: "≤ 1.10", targetVal: 1.10, atMost: true},
	{measure: "the same ÷ a bare boot through qboot (the firmware macvz's driver boots with)", bench: "BenchmarkPodStart", value: "pod-p50-ms", baseline: "bare-qboot-p50-ms", ratio: "ratio-qboot", unit: "ms", target: "—"},
	{measure: "a pod's boot up to the agent's first console line (the guest's own boot, as the bare boots are timed) ÷ the bare boot through qboot", bench: "BenchmarkPodStart", value: "pod-line-p50-ms", baseline: "bare-qboot-p50-ms", ratio: "line-ratio-qboot", unit: "ms", target: "—"},
	{measure: "what a pod start takes after that line (the agent's first answer, setup, the container's process, the first exec) ÷ the whole pod start", bench: "BenchmarkPodStart", value: "after-line-p50-ms", baseline: "pod-p50-ms", unit: "ms", target: "—"},
	{measure: "where a cold start's guest vCPU went by its first exec's end (never idle under TCG): the agent's user time / the container's first process (the exec helper, then its start)", bench: "BenchmarkPodStart", value: "guest-agent-user-ms", also: "guest-ctr-ms", unit: "ms", target: "—"},
	{measure: "warm start p50 ÷ cold start p50", bench: "BenchmarkPodWarmStart", value: "warm-p50-ms", baseline: "cold-p50-ms", ratio: "ratio", unit: "ms", target: "≤ 0.15", targetVal: 0.15, atMost: true},
	{measure: "the same from the warm pool (vm.warm_pool = 1) ÷ cold start p50", bench: "BenchmarkPodWarmStart", value: "pool-p50-ms", baseline: "cold-p50-ms", ratio: "pool-ratio", unit: "ms", target: "≤ 0.15", targetVal: 0.15, atMost: true},
	{measure: "Tart pull of a 1 GiB disk: CPU seconds per GiB written (baseline: download-only fetch's CPU)", bench: "BenchmarkPullTart", value: "cpu-s/GiB", baseline: "raw-cpu-s/op", unit: "CPU-s", target: "≤ 1.5 CPU-s", targetVal: 1.5, atMost: true, onValue: true},
	{measure: "the same pull's CPU ÷ the passes no pull can leave out, in the same run (each blob downloaded straight into the unpacker: download, both digests, LZ4, the disk's writes; no content store, no resumable ingest)", bench: "BenchmarkPullTart", value: "cpu-s/op", baseline: "floor-cpu-s/op", ratio: "cpu/floor", unit: "CPU-s", target: "—"},
	{measure: "the same for a disk 15/16 free space (zero chunks, one layer digest): CPU seconds per GiB", bench: "BenchmarkPullTartFreeSpace", value: "cpu-s/GiB", baseline: "raw-cpu-s/op", unit: "CPU-s", target: "—"},
	{measure: "Tart pull ÷ download-only fetch of the same blobs through a 1 Gbit/s link (throughput)", bench: "BenchmarkPullTartLink", value: "wire-MB/s", baseline: "raw-MB/s", ratio: "pull/raw", unit: "MB/s", target: "≥ 0.95", targetVal: 0.95},
	{measure: "the same for the pull's floor (only the passes no pull can leave out, each blob decoded as it is read, with no queue between) through the same link", bench: "BenchmarkPullTartLink", value: "floor-MB/s", baseline: "raw-MB/s", ratio: "floor/raw", unit: "MB/s", target: "—"},
	{measure: "the same over loopback (no link limit: the pull's own speed)", bench: "BenchmarkPullTart", value: "wire-MB/s", baseline: "raw-MB/s", ratio: "pull/raw", unit: "MB/s", target: "—"},
	{measure: "ListPodSandbox p99 at 100 sandboxes (baseline: its p50)", bench: "BenchmarkListPodSandbox", value: "pods-p99-ms-at-100", baseline: "pods-p50-ms-at-100", unit: "ms", target: "≤ 1 ms", targetVal: 1, atMost: true, onValue: true},
	{measure: "ListPodSandbox p99 at 1000 sandboxes (baseline: its p50)", bench: "BenchmarkListPodSandbox", value: "pods-p99-ms-at-1000", baseline: "pods-p50-ms-at-1000", unit: "ms", target: "≤ 5 ms", targetVal: 5, atMost: true, onValue: true},
	{measure: "ListContainers p99 at 100 / 1000 sandboxes", bench: "BenchmarkListPodSandbox", value: "ctrs-p99-ms-at-100", also: "ctrs-p99-ms-at-1000", unit: "ms", target: "—"},
	{measure: "Version p99 at 100 / 1000 sandboxes (a call the daemon does no work for: the socket's floor)", bench: "BenchmarkListPodSandbox", value: "version-p99-ms-at-100", also: "version-p99-ms-at-1000", unit: "ms", target: "—"},
	{measure: "10 pods started at once ÷ one after another (wall time)", bench: "BenchmarkPodsConcurrent", value: "concurrent-ms", baseline: "sequential-ms", ratio: "ratio", unit: "ms", target: "≤ 0.6", targetVal: 0.6, atMost: true},
	{measure: "daemon resident memory idle / at 1000 sandboxes", bench: "BenchmarkPodStart", value: "daemon-idle-MiB", also: "daemon-MiB-at-1000", alsoBench: "BenchmarkListPodSandbox", unit: "MiB", target: "keep"},
	{measure: "shim memory per pod: resident (the binary's shared pages included) / anonymous", bench: "BenchmarkPodStart", value: "shim-rss-MiB", also: "shim-anon-MiB", unit: "MiB", target: "keep"},
}

// benchLine matches "BenchmarkName-N  iters  value unit  value unit ...".
var benchLine = regexp.MustCompile(`^(Benchmark[A-Za-z0-9_]+)(?:-\d+)?\s+\d+\s+(.*)$`)

// parse collects each benchmark's metrics (the last run's when a
// benchmark ran more than once).
func parse(r io.Reader) (map[string]map[string]float64, error) {
	out := map[string]map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		f := strings.Fields(m[2])
		metrics := map[string]float64{}
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			metrics[f[i+1]] = v
		}
		out[m[1]] = metrics
	}
	return out, sc.Err()
}

func fmtNum(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func summarize(w io.Writer, res map[string]map[string]float64) {
	fmt.Fprintln(w, "| measure | value | baseline (same run) | ratio | target | met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range rows {
		m, ok := res[r.bench]
		v, hasV := m[r.value]
		if !ok || !hasV {
			fmt.Fprintf(w, "| %s | not run (%s) | | | %s | |\n", r.measure, r.bench, r.target)
			continue
		}
		value := fmtNum(v) + " " + r.unit
		base, ratio := "—", "—"
		var rv float64
		hasRatio := false
		if r.baseline != "" {
			if b, ok := m[r.baseline]; ok {
				base = fmtNum(b) + " " + r.unit
				if r.ratio != "" {
					rv, hasRatio = m[r.ratio]
				} else if b > 0 && !r.onValue {
					rv, hasRatio = v/b, true
				}
			}
		}
		if r.ratio != "" && !hasRatio {
			rv, hasRatio = m[r.ratio]
		}
		if hasRatio {
			ratio = fmtNum(rv)
		}
		met := ""
		if r.targetVal > 0 {
			x, ok := rv, hasRatio
			if r.onValue {
				x, ok = v, true
			}
			if ok {
				if (r.atMost && x <= r.targetVal) || (!r.atMost && x >= r.targetVal) {
					met = "yes"
				} else {
					met = "no"
				}
			}
		}
		if r.also != "" {
			ab := r.alsoBench
			if ab == "" {
				ab = r.bench
			}
			if a, ok := res[ab][r.also]; ok {
				value += " / " + fmtNum(a) + " " + r.unit
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.measure, value, base, ratio, r.target, met)
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchsummary BENCH-OUTPUT")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	res, err := parse(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	summarize(os.Stdout, res)
}
