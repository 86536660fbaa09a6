package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkPodStart-2   	       1	27000000000 ns/op	      2046 bare-p50-ms	        33.1 daemon-idle-MiB	      2733 pod-p50-ms	         1.336 ratio	         8.9 shim-rss-MiB
BenchmarkListPodSandbox-2   	       1	11713893738 ns/op	         3.339 ctrs-p99-ms-at-100	         9.448 ctrs-p99-ms-at-1000	        46.82 daemon-MiB-at-1000	         0.5240 pods-p50-ms-at-100	         3.361 pods-p50-ms-at-1000	         0.9 pods-p99-ms-at-100	         9.117 pods-p99-ms-at-1000
PASS
`

func TestSummarize(t *testing.T) {
	res, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	summarize(&b, res)
	out := b.String()
	for _, want := range []string{
		"| 2733 ms | 2046 ms | 1.34 | ≤ 1.10 | no |",
		"ListPodSandbox p99 at 100 sandboxes (baseline: its p50) | 0.90 ms | 0.52 ms | — | ≤ 1 ms | yes |",
		"ListPodSandbox p99 at 1000 sandboxes (baseline: its p50) | 9.12 ms | 3.36 ms | — | ≤ 5 ms | no |",
		"| 33.1 MiB / 46.8 MiB |",
		"not run (BenchmarkPodWarmStart)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}
