// Package imagestore keeps pulled images: blobs in containerd's local
// content store, image records (name → manifest) in bbolt, and, for VM
// images, the unpacked disk as a committed base in the snapshotter.
package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/macvz/macvz/internal/keyedlock"
	"github.com/macvz/macvz/vmimage"
)

var bucketImages = []byte("images.v1")

// Image is one image record: a name and what it points at.
type Image struct {
	// Name is the normalized reference: "docker.io/library/busybox:1.36"
	// for a tag, "repo@sha256:..." for a pull by digest.
	Name string `json:"name"`
	// Target is what the name resolved to in the registry (manifest or
	// index); its digest is the repo digest.
	Target ocispec.Descriptor `json:"target"`
	// Manifest is the platform manifest chosen from Target.
	Manifest ocispec.Descriptor `json:"manifest"`
	// Config is the manifest's config blob; its digest is the image ID
	// of an ordinary image (see ID).
	Config ocispec.Descriptor `json:"config"`
	// Kind says which VM format the image is, if any.
	Kind vmimage.Kind `json:"kind,omitempty"`
	// Size is the bytes of every blob of the image (manifests, config,
	// layers) as stored.
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// ID is the image ID CRI reports. For an ordinary image it is the config
// digest, as containerd reports. For a VM image it is the manifest
// digest: VM formats carry stub configs that unrelated images share byte
// for byte (every Tart image of one OS, architecture and disk format has
// the same config, agoda images the empty config "{}"), and a shared ID
// would make them one image to List, Resolve and Remove.
func (i *Image) ID() string {
	if i.Kind != vmimage.KindNone {
		return i.Manifest.Digest.String()
	}
	return i.Config.Digest.String()
}

// Options configure a Store.
type Options struct {
	// Root holds content/, images.db and the snapshotter's data.
	Root string
	// Snapshotter receives unpacked VM bases. Required.
	Snapshotter snapshots.Snapshotter
	// Hosts maps a registry host as written in image references
	// ("docker.io", "localhost:5000") to how it is reached; a host not
	// listed is reached over HTTPS, with no mirrors.
	Hosts map[string]Host
	// MaxConcurrentDownloads bounds parallel blob downloads per pull.
	MaxConcurrentDownloads int
	// MaxUnpackedSize caps what one VM image unpacks to, holes included
	// (vmimage.Limits); 0 means vmimage.DefaultMaxUnpackedSize.
	MaxUnpackedSize int64
	// FreeSpace, when set, replaces statfs(2) of the snapshotter's
	// directory in the free-space checks of unpacking, for tests.
	FreeSpace func(dir string) (avail, total uint64, err error)
	// KeepDiskChunks keeps a VM image's disk chunk blobs in the content
	// store after its base is unpacked and verified; by default they are
	// released then (the unpacked disk is what boots, and keeping both
	// would double the disk space a macOS image takes), and a re-pull of
	// an image whose base is there does not fetch them again. Off, the
	// chunks of a format that resumes by chunk (Tart) are not stored at
	// all: they stream into the unpacker (partial.go).
	KeepDiskChunks bool
	// InUse, when set, reports whether a sandbox uses an image ID; such
	// images refuse removal.
	InUse func(imageID string) bool
	// PullDone, when set, is told of each pull when it ends: the bytes it
	// downloaded (blobs already stored cost none), how long it took and
	// its error. Concurrent Pulls that share a download are one pull.
	PullDone func(fetched int64, took time.Duration, err error)
}

// Host is how the store reaches one registry host.
type Host struct {
	// Mirrors are tried in order before the host itself, each as
	// "host[:port]" (scheme from Insecure of that mirror's own entry, or
	// https).
	Mirrors []string
	// Insecure allows plain HTTP to this host.
	Insecure bool
	// SkipVerify disables TLS certificate verification for this host.
	SkipVerify bool
}

// Store is safe for concurrent use.
type Store struct {
	opts    Options
	content content.Store
	db      *bolt.DB
	sn      snapshots.Snapshotter

	// flights are the pulls under way, by name and credentials: callers
	// of one pull share its download (see Pull).
	flightsMu sync.Mutex
	flights   map[string]*flight

	// inflight counts pulls holding each digest, so that garbage
	// collection after a removal never deletes a blob a running pull has
	// fetched but not yet recorded.
	mu       sync.Mutex
	inflight map[digest.Digest]int
	// gc serialises record changes with garbage collection.
	gc sync.Mutex
	// boot caches what VMImage reads from a VM image's base and
	// manifest, by manifest digest (*bootInfo).
	boot sync.Map
	// trees are the image trees being unpacked or removed, by manifest
	// (see Tree): closed when done.
	treesMu sync.Mutex
	trees   map[digest.Digest]chan struct{}
	// extracting are the manifests being unpacked (lockExtraction).
	extracting keyedlock.Locks[digest.Digest]
	// releasing counts the chunk releases running after their pulls
	// returned (see releaseDiskChunksLater); Close waits for them.
	releasing sync.WaitGroup
	// clients are the registries' HTTP clients by host (registryClient).
	clientsMu sync.Mutex
	clients   map[string]*http.Client
}

// Open opens (creating if needed) the store under opts.Root.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Snapshotter == nil {
		return nil, errors.New("imagestore: a snapshotter is required")
	}
	if opts.MaxConcurrentDownloads < 1 {
		opts.MaxConcurrentDownloads = 1
	}
	if err := os.MkdirAll(opts.Root, 0o700); err != nil {
		return nil, err
	}
	// The local store makes blobs/ on its first write, but walks it for
	// GC before that: make it now so an empty store collects cleanly.
	if err := os.MkdirAll(filepath.Join(opts.Root, "content", "blobs"), 0o700); err != nil {
		return nil, err
	}
	cs, err := local.NewStore(filepath.Join(opts.Root, "content"))
	if err != nil {
		return nil, fmt.Errorf("content store: %w", err)
	}
	db, err := bolt.Open(filepath.Join(opts.Root, "images.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("image database %s: %w", filepath.Join(opts.Root, "images.db"), err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketImages)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	s := &Store{opts: opts, content: cs, db: db, sn: opts.Snapshotter, inflight: map[digest.Digest]int{}, flights: map[string]*flight{}}
	// A crash mid-pull can leave an unpacked-but-uncommitted base; the
	// snapshotter's active extraction snapshots are ours to remove.
	s.removeStaleExtractions(ctx)
	s.expirePartials(ctx, ingestExpiry)
	return s, nil
}

// Close waits for the releases of disk chunks under way, then closes the
// database. The snapshotter is the caller's.
func (s *Store) Close() error {
	s.releasing.Wait()
	s.clientsMu.Lock()
	for _, c := range s.clients {
		c.CloseIdleConnections()
	}
	s.clientsMu.Unlock()
	return s.db.Close()
}

// Content exposes the content store (read-only use by callers).
func (s *Store) Content() content.Store { return s.content }

// List returns every image record, sorted by name.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	var out []Image
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketImages).ForEach(func(k, v []byte) error {
			var img Image
			if err := json.Unmarshal(v, &img); err != nil {
				return fmt.Errorf("image record %q: %w", k, err)
			}
			out = append(out, img)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// Get returns the record with exactly this name.
func (s *Store) Get(ctx context.Context, name string) (Image, error) {
	var img Image
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketImages).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("image %q: %w", name, errdefs.ErrNotFound)
		}
		return json.Unmarshal(v, &img)
	})
	return img, err
}

// Resolve finds the records an image ID, repo digest or tag refers to:
// every name of that image. An ID may be given with or without its
// "sha256:" prefix.
func (s *Store) Resolve(ctx context.Context, refOrID string) ([]Image, error) {
	all, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	id := refOrID
	if !strings.Contains(id, ":") && len(id) == 64 {
		id = "sha256:" + id
	}
	if d, err := digest.Parse(id); err == nil {
		if out := byID(all, d.String()); len(out) > 0 {
			return out, nil
		}
		return nil, fmt.Errorf("image %q: %w", refOrID, errdefs.ErrNotFound)
	}
	named, err := ParseRef(refOrID)
	if err != nil {
		return nil, err
	}
	for _, img := range all {
		if img.Name == named.String() {
			return byID(all, img.ID()), nil
		}
	}
	return nil, fmt.Errorf("image %q: %w", refOrID, errdefs.ErrNotFound)
}

func byID(all []Image, id string) []Image {
	var out []Image
	for _, img := range all {
		if img.ID() == id {
			out = append(out, img)
		}
	}
	return out
}

// put stores img under its name, keeping the creation time of a record
// it replaces, and returns what it stored.
func (s *Store) put(img Image) (Image, error) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketImages)
		if old := bk.Get([]byte(img.Name)); old != nil {
			var prev Image
			if json.Unmarshal(old, &prev) == nil && !prev.CreatedAt.IsZero() {
				img.CreatedAt = prev.CreatedAt
			}
		}
		b, err := json.Marshal(img)
		if err != nil {
			return err
		}
		return bk.Put([]byte(img.Name), b)
	})
	return img, err
}

func (s *Store) hold(ds ...digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		s.inflight[d]++
	}
}

func (s *Store) release(ds ...digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		if s.inflight[d]--; s.inflight[d] <= 0 {
			delete(s.inflight, d)
		}
	}
}

func logger(ctx context.Context) *slog.Logger { return slog.Default() }

// Usage is the space the store's content takes: allocated bytes and
// inodes under the content directory, plus the snapshotter's usage.
func (s *Store) Usage(ctx context.Context) (bytes, inodes int64, err error) {
	err = filepath.WalkDir(filepath.Join(s.opts.Root, "content"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		inodes++
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			bytes += int64(st.Blocks) * 512
		} else {
			bytes += fi.Size()
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	var names []string
	_ = s.sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		names = append(names, info.Name)
		return nil
	})
	for _, n := range names {
		u, err := s.sn.Usage(ctx, n)
		if err != nil {
			continue
		}
		bytes += u.Size
		inodes += u.Inodes
	}
	return bytes, inodes, nil
}

// Config returns the image's config blob.
func (s *Store) Config(ctx context.Context, img Image) ([]byte, error) {
	return content.ReadBlob(ctx, s.content, img.Config)
}

// OCIConfig parses the config of an ordinary image; ok is false for VM
// images, whose config is a format-specific document.
func (s *Store) OCIConfig(ctx context.Context, img Image) (cfg ocispec.Image, ok bool, err error) {
	if img.Kind != "" {
		return cfg, false, nil
	}
	b, err := s.Config(ctx, img)
	if err != nil {
		return cfg, false, err
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, false, fmt.Errorf("image config %s: %w", img.Config.Digest, err)
	}
	return cfg, true, nil
}
