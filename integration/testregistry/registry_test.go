package testregistry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/macvz/macvz/integration/testimage"
)

func testImage(t *testing.T, layerSize int) (testimage.Image, testimage.Blob) {
	t.Helper()
	layer := make([]byte, layerSize)
	for i := range layer {
		layer[i] = byte(i * 7)
	}
	cfg := testimage.NewBlob(ocispec.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux"}`), nil)
	l := testimage.NewBlob(ocispec.MediaTypeImageLayer, layer, map[string]string{"org.example": "x"})
	img, err := testimage.FromManifest(ocispec.Manifest{Config: cfg.Desc, Layers: []ocispec.Descriptor{l.Desc}}, cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	return img, l
}

// get fetches path from r with optional basic auth and an optional Range.
func get(t *testing.T, r *Registry, path, user, pass, rng string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	// A fresh transport per request: a cut connection must not poison the next.
	c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestPushAndPull(t *testing.T) {
	for _, auth := range []bool{false, true} {
		t.Run(fmt.Sprintf("auth=%v", auth), func(t *testing.T) {
			var opts Options
			if auth {
				opts = Options{Username: "alice", Password: "s3cret"}
			}
			r := Start(t, opts)
			img, layer := testImage(t, 100_000)
			ctx := context.Background()
			if err := r.Push(ctx, "library/test", "v1", img); err != nil {
				t.Fatal(err)
			}
			// Pushing again is a no-op for the blobs (HEAD finds them).
			if err := r.Push(ctx, "library/test", "v1", img); err != nil {
				t.Fatal(err)
			}

			if auth {
				resp, _, err := get(t, r, "/v2/library/test/manifests/v1", "", "", "")
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
					t.Fatalf("anonymous pull: %s %v, want 401 with a challenge", resp.Status, resp.Header)
				}
				resp, _, _ = get(t, r, "/v2/library/test/manifests/v1", "alice", "wrong", "")
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("wrong password: %s, want 401", resp.Status)
				}
			}

			resp, body, err := get(t, r, "/v2/library/test/manifests/v1", opts.Username, opts.Password, "")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, img.ManifestData) {
				t.Fatalf("manifest: %s %q", resp.Status, body)
			}
			if got := resp.Header.Get("Docker-Content-Digest"); got != img.Manifest.Digest.String() {
				t.Fatalf("manifest digest %s, want %s", got, img.Manifest.Digest)
			}
			var m ocispec.Manifest
			if err := json.Unmarshal(body, &m); err != nil || m.Layers[0].Digest != layer.Desc.Digest {
				t.Fatalf("manifest does not name the layer: %v %+v", err, m)
			}
			resp, body, err = get(t, r, "/v2/library/test/blobs/"+layer.Desc.Digest.String(), opts.Username, opts.Password, "")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, layer.Data) {
				t.Fatalf("blob: %s, %d bytes", resp.Status, len(body))
			}
			if n := r.Requests(layer.Desc.Digest); n != 1 {
				t.Fatalf("Requests = %d, want 1", n)
			}
		})
	}
}

func TestPushByDigest(t *testing.T) {
	r := Start(t, Options{})
	img, _ := testImage(t, 10)
	if err := r.Push(context.Background(), "bydigest", "", img); err != nil {
		t.Fatal(err)
	}
	resp, body, err := get(t, r, "/v2/bydigest/manifests/"+img.Manifest.Digest.String(), "", "", "")
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, img.ManifestData) {
		t.Fatalf("by digest: %v %v", err, resp)
	}
	// No tag: distribution answers NAME_UNKNOWN for a repository without tags.
	resp, body, _ = get(t, r, "/v2/bydigest/tags/list", "", "", "")
	if resp.StatusCode != http.StatusNotFound || !bytes.Contains(body, []byte("NAME_UNKNOWN")) {
		t.Fatalf("tags after a push by digest: %s %s", resp.Status, body)
	}
}

// A blob whose data disagrees with its descriptor is served as-is under
// the claimed digest.
func TestPushMismatchedBlob(t *testing.T) {
	r := Start(t, Options{})
	cfg := testimage.NewBlob(ocispec.MediaTypeImageConfig, []byte(`{}`), nil)
	bad := testimage.NewBlob(ocispec.MediaTypeImageLayer, []byte("the real content"), nil)
	bad.Data = []byte("something else!")
	img, err := testimage.FromManifest(ocispec.Manifest{Config: cfg.Desc, Layers: []ocispec.Descriptor{bad.Desc}}, cfg, bad)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Push(context.Background(), "bad", "v1", img); err != nil {
		t.Fatal(err)
	}
	resp, body, err := get(t, r, "/v2/bad/blobs/"+bad.Desc.Digest.String(), "", "", "")
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "something else!" {
		t.Fatalf("mismatched blob: %v %v %q", err, resp, body)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != bad.Desc.Digest.String() {
		t.Fatalf("served under %s, want %s", got, bad.Desc.Digest)
	}
}

func TestCorruptBlob(t *testing.T) {
	r := Start(t, Options{})
	img, layer := testImage(t, 5000)
	if err := r.Push(context.Background(), "c", "v1", img); err != nil {
		t.Fatal(err)
	}
	r.CorruptBlob(layer.Desc.Digest)
	resp, body, err := get(t, r, "/v2/c/blobs/"+layer.Desc.Digest.String(), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || len(body) != len(layer.Data) ||
		resp.Header.Get("Docker-Content-Digest") != layer.Desc.Digest.String() {
		t.Fatalf("corrupt blob changed status or headers: %s %v", resp.Status, resp.Header)
	}
	if digest.FromBytes(body) == layer.Desc.Digest {
		t.Fatal("corrupt blob served the right bytes")
	}
	// Ranges are corrupted too.
	_, part, _ := get(t, r, "/v2/c/blobs/"+layer.Desc.Digest.String(), "", "", "bytes=10-19")
	if len(part) != 10 || bytes.Equal(part, layer.Data[10:20]) {
		t.Fatalf("range of a corrupt blob: %x", part)
	}
	// The manifest and other blobs are untouched, and ClearFaults heals.
	if _, body, _ := get(t, r, "/v2/c/manifests/v1", "", "", ""); !bytes.Equal(body, img.ManifestData) {
		t.Fatal("manifest corrupted")
	}
	r.ClearFaults()
	if _, body, _ := get(t, r, "/v2/c/blobs/"+layer.Desc.Digest.String(), "", "", ""); !bytes.Equal(body, layer.Data) {
		t.Fatal("ClearFaults did not heal the blob")
	}
	if n := r.Requests(layer.Desc.Digest); n != 3 {
		t.Fatalf("Requests = %d, want 3", n)
	}
}

// CorruptBlob also works on a manifest fetched by tag.
func TestCorruptManifestByTag(t *testing.T) {
	r := Start(t, Options{})
	img, _ := testImage(t, 10)
	if err := r.Push(context.Background(), "m", "v1", img); err != nil {
		t.Fatal(err)
	}
	r.CorruptBlob(img.Manifest.Digest)
	_, body, _ := get(t, r, "/v2/m/manifests/v1", "", "", "")
	if len(body) != len(img.ManifestData) || bytes.Equal(body, img.ManifestData) {
		t.Fatal("manifest by tag not corrupted")
	}
}

func TestTruncateAfterAndResume(t *testing.T) {
	r := Start(t, Options{})
	img, layer := testImage(t, 300_000)
	if err := r.Push(context.Background(), "t", "v1", img); err != nil {
		t.Fatal(err)
	}
	const n = 100_000
	r.TruncateAfter(layer.Desc.Digest, n)
	path := "/v2/t/blobs/" + layer.Desc.Digest.String()

	resp, body, err := get(t, r, path, "", "", "")
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated GET: err %v, want unexpected EOF", err)
	}
	if resp.StatusCode != http.StatusOK || len(body) != n || !bytes.Equal(body, layer.Data[:n]) {
		t.Fatalf("truncated GET: %s, %d bytes, want the first %d", resp.Status, len(body), n)
	}

	// A resuming client makes n bytes of progress per request.
	got := body
	for i := 0; len(got) < len(layer.Data); i++ {
		if i > 5 {
			t.Fatal("resume made no progress")
		}
		resp, part, err := get(t, r, path, "", "", fmt.Sprintf("bytes=%d-", len(got)))
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("range: %s", resp.Status)
		}
		got = append(got, part...)
	}
	if !bytes.Equal(got, layer.Data) {
		t.Fatal("resumed blob differs")
	}
	if c := r.Requests(layer.Desc.Digest); c != 3 {
		t.Fatalf("Requests = %d, want 3", c)
	}

	// Limited to one cut: the second response is whole.
	r.TruncateAfterTimes(layer.Desc.Digest, 10, 1)
	if _, _, err := get(t, r, path, "", "", ""); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("first GET: %v", err)
	}
	if _, body, err := get(t, r, path, "", "", ""); err != nil || !bytes.Equal(body, layer.Data) {
		t.Fatalf("second GET: %v, %d bytes", err, len(body))
	}
}

func TestSlowBlobs(t *testing.T) {
	r := Start(t, Options{})
	img, layer := testImage(t, 50_000)
	if err := r.Push(context.Background(), "s", "v1", img); err != nil {
		t.Fatal(err)
	}
	r.SlowBlobs(200_000) // 50 kB at 200 kB/s: about 250 ms
	start := time.Now()
	_, body, err := get(t, r, "/v2/s/blobs/"+layer.Desc.Digest.String(), "", "", "")
	if err != nil || !bytes.Equal(body, layer.Data) {
		t.Fatalf("slow blob: %v", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("slow blob took %v, want >= 200ms", d)
	}
}

func TestStop(t *testing.T) {
	r := Start(t, Options{})
	r.Stop()
	_, _, err := get(t, r, "/v2/", "", "", "")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after Stop: %v, want connection refused", err)
	}
	r.Stop() // idempotent
}
