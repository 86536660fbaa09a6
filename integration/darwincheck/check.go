package main

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
)

// node is one package to check; done closes when types is final.
type node struct {
	p     *pkg
	done  chan struct{}
	types *types.Package // nil when it could not be checked at all
}

type checker struct {
	nodes  []*node
	byPath map[string]*node
	fset   *token.FileSet // safe for concurrent use
	sizes  types.Sizes
	all    bool
	own    int
	cwd    string
	files  atomic.Int64 // parsed, for -v

	mu       sync.Mutex
	errs     map[string]bool // a test variant repeats its package's errors
	filtered int
}

func newChecker(pkgs []*pkg, goarch string, all bool) *checker {
	c := &checker{
		byPath: map[string]*node{},
		fset:   token.NewFileSet(),
		sizes:  types.SizesFor("gc", goarch),
		all:    all,
		errs:   map[string]bool{},
	}
	c.cwd, _ = os.Getwd()
	for _, p := range pkgs {
		// "p.test" is the generated test main: nothing of ours in it.
		if strings.HasSuffix(p.ImportPath, ".test") {
			continue
		}
		n := &node{p: p, done: make(chan struct{})}
		c.nodes = append(c.nodes, n)
		c.byPath[p.ImportPath] = n
		if p.own() && p.ForTest == "" {
			c.own++
		}
	}
	return c
}

// run checks every package once its imports are checked, `workers` at a
// time. go list's dependency order guarantees there is no cycle to wait on.
func (c *checker) run(workers int) {
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(n.done)
			for _, imp := range n.p.Imports {
				if d := c.byPath[imp]; d != nil {
					<-d.done
				}
			}
			sem <- struct{}{}
			defer func() { <-sem }()
			c.check(n)
		}()
	}
	wg.Wait()
}

// reporting tells whether errors in p are ours to report.
func (c *checker) reporting(p *pkg) bool { return c.all || p.own() }

func (c *checker) check(n *node) {
	p := n.p
	if p.ImportPath == "unsafe" {
		n.types = types.Unsafe
		return
	}
	report := c.reporting(p)
	if report {
		if p.Error != nil {
			c.add(p.Error.Err)
		}
		for _, e := range p.DepsErrors {
			c.add(e.Err)
		}
	}
	var files []*ast.File
	for _, name := range append(append([]string(nil), p.GoFiles...), p.CgoFiles...) {
		if !filepath.IsAbs(name) {
			name = filepath.Join(p.Dir, name)
		}
		// Comments are not needed, but the parser still reads //go:build
		// lines, which set a file's language version.
		f, err := parser.ParseFile(c.fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			if report {
				c.add(err.Error())
			}
			if f == nil {
				continue
			}
		}
		files = append(files, f)
	}
	c.files.Add(int64(len(files)))
	if len(files) == 0 {
		return
	}
	conf := types.Config{
		Importer:    importer{c, p},
		FakeImportC: true,
		Sizes:       c.sizes,
		GoVersion:   goVersion(p),
		// Dependencies are only imported: their exported API is all that
		// matters, and skipping bodies makes the whole run several times
		// faster.
		IgnoreFuncBodies: !report,
		Error: func(err error) {
			if report {
				c.typeError(err)
			}
		},
	}
	n.types, _ = conf.Check(packagePath(p.ImportPath), c.fset, files, nil)
}

// packagePath drops go list's test-variant suffix: "p [p.test]" is p.
func packagePath(importPath string) string {
	path, _, _ := strings.Cut(importPath, " ")
	return path
}

func goVersion(p *pkg) string {
	switch {
	case p.Module != nil && p.Module.GoVersion != "":
		return "go" + p.Module.GoVersion
	case p.Standard && strings.HasPrefix(runtime.Version(), "go"):
		return runtime.Version()
	}
	return "" // no go directive: accept the newest language
}

// importer resolves an import of from through its ImportMap (vendored
// standard packages, test variants) to a checked package.
type importer struct {
	c    *checker
	from *pkg
}

func (im importer) Import(path string) (*types.Package, error) {
	if path == "unsafe" {
		return types.Unsafe, nil
	}
	if mapped, ok := im.from.ImportMap[path]; ok {
		path = mapped
	}
	n := im.c.byPath[path]
	if n == nil {
		return nil, fmt.Errorf("%s is not in go list's dependencies of %s", path, im.from.ImportPath)
	}
	<-n.done
	if n.types == nil {
		return nil, errors.New("could not type-check " + path)
	}
	return n.types, nil
}

func (c *checker) typeError(err error) {
	var te types.Error
	if !errors.As(err, &te) {
		c.add(err.Error())
		return
	}
	pos := c.fset.Position(te.Pos)
	if knownFalsePositive(pos.Filename, te.Msg) {
		c.mu.Lock()
		c.filtered++
		c.mu.Unlock()
		return
	}
	if rel, err := filepath.Rel(c.cwd, pos.Filename); err == nil && !strings.HasPrefix(rel, "..") {
		pos.Filename = rel
	}
	c.add(fmt.Sprintf("%s: %s", pos, te.Msg))
}

func (c *checker) add(msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs[msg] = true
}

// report returns the distinct errors and how many known false positives
// were dropped.
func (c *checker) report() ([]string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.errs))
	for e := range c.errs {
		out = append(out, e)
	}
	return out, c.filtered
}
