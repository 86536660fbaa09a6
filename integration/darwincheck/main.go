// Command darwincheck type-checks macvz's packages as they build for
// darwin/arm64, on a machine that cannot compile them.
//
// The darwin side (Virtualization.framework through Code-Hex/vz/v3) needs
// cgo and the macOS SDK, which Linux lacks. Type-checking needs neither:
// `go list -deps -json` under GOOS=darwin GOARCH=arm64 CGO_ENABLED=1 picks
// the files the darwin build would compile, and go/types checks them with
// FakeImportC, which accepts every C.name without knowing its type. Packages
// are checked from source in dependency order, each dependency once, with
// function bodies skipped outside our module (their exported types are all
// an importer needs).
//
// Errors are reported only for packages of the main module (and their
// tests). A few errors that FakeImportC causes in correct code are
// filtered; see knownFalsePositive. Exit status 1 on any error.
//
// Usage (from the module root): go run ./integration/darwincheck [-v] [patterns]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"time"
)

func main() {
	goos := flag.String("goos", "darwin", "GOOS to check for")
	goarch := flag.String("goarch", "arm64", "GOARCH to check for")
	tests := flag.Bool("tests", true, "also check _test.go files")
	all := flag.Bool("all", false, "report errors in dependencies too (to study false positives)")
	verbose := flag.Bool("v", false, "print timings and package counts")
	flag.Parse()
	patterns := flag.Args()
	if len(patterns) == 0 {
		patterns = []string{"./..."}
	}

	start := time.Now()
	pkgs, err := list(*goos, *goarch, *tests, patterns)
	if err != nil {
		fmt.Fprintln(os.Stderr, "darwincheck:", err)
		os.Exit(2)
	}
	listed := time.Since(start)

	c := newChecker(pkgs, *goarch, *all)
	c.run(runtime.GOMAXPROCS(0))
	errs, filtered := c.report()
	sort.Strings(errs)
	for _, e := range errs {
		fmt.Println(e)
	}
	if *verbose {
		fmt.Fprintf(os.Stderr, "darwincheck: %s/%s: %d packages (%d ours), %d files, go list %v, total %v, %d errors, %d known false positives filtered\n",
			*goos, *goarch, len(pkgs), c.own, c.files.Load(), listed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), len(errs), filtered)
	}
	if len(errs) > 0 {
		fmt.Fprintf(os.Stderr, "darwincheck: %d type errors for %s/%s\n", len(errs), *goos, *goarch)
		os.Exit(1)
	}
}
