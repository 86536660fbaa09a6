// Package testregistry runs a real OCI registry (distribution/v3) in-process
// on 127.0.0.1 over plain HTTP, for tests, benchmarks and the demo.
//
// Tests get a registry that behaves like the ones users pull from (the same
// upload, range, auth and error paths), plus fault injection in front of it:
// corrupted blobs, connections cut mid-blob, slow blobs and per-blob request
// counts. There is no internet here, so every test pushes what it pulls.
package testregistry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"golang.org/x/crypto/bcrypt"

	// Registered by name: the registry looks both up in its factories.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// Options configures a registry. The zero value is an open registry on a
// random port with storage in a temporary directory.
type Options struct {
	// Username and Password, when both are set, turn on htpasswd (HTTP
	// Basic) auth for every request, pulls included.
	Username, Password string
	// Root is the storage directory. Empty means a temporary directory that
	// Stop removes.
	Root string
	// Addr is the listen address; empty means 127.0.0.1:0 (a free port).
	Addr string
}

// Registry is one running registry.
type Registry struct {
	opts    Options
	ln      net.Listener
	srv     *http.Server
	handler *faultHandler
	app     *handlers.App
	driver  storagedriver.StorageDriver // same directory as the app's: used for raw writes
	tmp     string                      // removed by Stop
	client  *http.Client
	faults  faults
	stopped sync.Once
	served  chan struct{}
	remote  string // set by Remote
}

// Start runs a registry until t ends. It fails t on error.
func Start(t testing.TB, opts Options) *Registry {
	t.Helper()
	r, err := New(opts)
	if err != nil {
		t.Fatalf("testregistry: %v", err)
	}
	t.Cleanup(r.Stop)
	return r
}

// New starts a registry serving in the background; the caller must Stop it.
func New(opts Options) (*Registry, error) {
	quiet()

	tmp, err := os.MkdirTemp("", "testregistry-")
	if err != nil {
		return nil, err
	}
	r := &Registry{opts: opts, tmp: tmp, served: make(chan struct{})}
	r.faults.init()
	if err := r.setup(); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	go func() {
		defer close(r.served)
		r.srv.Serve(r.ln)
	}()
	return r, nil
}

func (r *Registry) setup() error {
	root := r.opts.Root
	if root == "" {
		root = filepath.Join(r.tmp, "storage")
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	secret := make([]byte, 16)
	rand.Read(secret)

	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"filesystem": configuration.Parameters{"rootdirectory": root},
		"delete":     configuration.Parameters{"enabled": true},
		// Serve blobs ourselves, never a redirect: the fault injection
		// sits in front of this server.
		"redirect": configuration.Parameters{"disable": true},
		// The purger would otherwise start a goroutine that sleeps for up
		// to an hour and outlives the test.
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	// A fixed secret avoids a warning and keeps upload state valid for the
	// registry's whole life.
	cfg.HTTP.Secret = hex.EncodeToString(secret)
	cfg.Log.Level = "warn"
	if r.opts.Username != "" || r.opts.Password != "" {
		if r.opts.Username == "" || r.opts.Password == "" {
			return errors.New("auth needs both Username and Password")
		}
		path, err := writeHtpasswd(r.tmp, r.opts.Username, r.opts.Password)
		if err != nil {
			return err
		}
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "testregistry", "path": path}}
	}

	ctx := context.Background()
	driver, err := factory.Create(ctx, "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		return err
	}
	r.driver = driver

	// NewApp panics on a bad configuration; turn that into an error.
	var app *handlers.App
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("configuring registry: %v", p)
			}
		}()
		app = handlers.NewApp(ctx, cfg)
	}()
	if err != nil {
		return err
	}
	r.app = app

	addr := r.opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		app.Shutdown()
		return err
	}
	r.ln = ln
	r.handler = &faultHandler{next: app, f: &r.faults}
	r.srv = &http.Server{
		Handler:           r.handler,
		ReadHeaderTimeout: 30 * time.Second,
		// net/http would log every write the registry attempts on a
		// connection that TruncateAfter has cut.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	r.client = &http.Client{Transport: &http.Transport{
		Proxy:               nil, // never send 127.0.0.1 through an http_proxy
		MaxIdleConnsPerHost: 8,
	}}
	return nil
}

// writeHtpasswd writes a one-user htpasswd file with a bcrypt hash, the
// only hash distribution's htpasswd controller accepts.
func writeHtpasswd(dir, user, pass string) (string, error) {
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "htpasswd")
	return path, os.WriteFile(path, []byte(user+":"+string(hash)+"\n"), 0o600)
}

// Host is "127.0.0.1:port", the registry part of an image reference.
func (r *Registry) Host() string {
	if r.remote != "" {
		return r.remote
	}
	return r.ln.Addr().String()
}

// Remote is a push client for a registry served elsewhere (plain HTTP,
// no auth), such as the testregistry command: only Push, PushManifest,
// Host, URL and Ref work on it. Blobs whose data does not match their
// digest cannot be pushed through it.
func Remote(host string) *Registry {
	return &Registry{remote: host, client: &http.Client{}}
}

// URL is the registry's base URL, "http://127.0.0.1:port".
func (r *Registry) URL() string { return "http://" + r.Host() }

// Ref is the image reference host/repo:tag.
func (r *Registry) Ref(repo, tag string) string { return r.Host() + "/" + repo + ":" + tag }

// Stop takes the registry down: the listener and every open connection are
// closed, so later requests get "connection refused". Storage in a
// temporary directory is removed. Stop is idempotent.
func (r *Registry) Stop() {
	r.stopped.Do(func() {
		r.srv.Close()
		<-r.served
		r.handler.stop()
		r.app.Shutdown()
		r.client.CloseIdleConnections()
		os.RemoveAll(r.tmp)
	})
}

// ServeOn serves the same registry on another listener too (one made
// inside a network namespace, for a daemon that runs there) until Stop,
// and returns its host:port for image references.
func (r *Registry) ServeOn(ln net.Listener) string {
	go r.srv.Serve(ln)
	return ln.Addr().String()
}

// Done is closed once the registry has stopped serving.
func (r *Registry) Done() <-chan struct{} { return r.served }
