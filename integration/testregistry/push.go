package testregistry

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"

	"github.com/opencontainers/go-digest"

	"github.com/macvz/macvz/integration/testimage"
)

// Push uploads every blob of img to repo, then its manifest under tag, or
// by digest only when tag is "". It speaks the registry's HTTP API like any
// client (with the registry's credentials), so a push exercises the same
// paths a real one does.
//
// A blob whose Data does not hash to its Desc.Digest (a test that wants the
// registry to serve wrong content) cannot be uploaded: the registry checks
// digests. Push writes such a blob straight into the registry's storage
// under the claimed digest, where the registry serves it as if it were
// right, as a registry with a damaged disk would.
func (r *Registry) Push(ctx context.Context, repo, tag string, img testimage.Image) error {
	for _, b := range img.Blobs {
		if err := r.pushBlob(ctx, repo, b); err != nil {
			return fmt.Errorf("push %s blob %s: %w", repo, b.Desc.Digest, err)
		}
	}
	ref := tag
	if ref == "" {
		ref = img.Manifest.Digest.String()
	}
	return r.PushManifest(ctx, repo, ref, img.Manifest.MediaType, img.ManifestData)
}

// PushManifest puts a manifest (or an index) under ref, a tag or a digest.
// The blobs and manifests it references must already be in repo.
func (r *Registry) PushManifest(ctx context.Context, repo, ref, mediaType string, data []byte) error {
	req, err := r.request(ctx, http.MethodPut, "/v2/"+repo+"/manifests/"+ref, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mediaType)
	return r.do(req, http.StatusCreated, fmt.Sprintf("push manifest %s:%s", repo, ref))
}

func (r *Registry) pushBlob(ctx context.Context, repo string, b testimage.Blob) error {
	if digest.FromBytes(b.Data) != b.Desc.Digest {
		if r.remote != "" {
			return fmt.Errorf("blob %s does not match its digest; only an in-process registry can serve it", b.Desc.Digest)
		}
		return r.writeRawBlob(ctx, repo, b.Desc.Digest, b.Data)
	}
	head, err := r.request(ctx, http.MethodHead, "/v2/"+repo+"/blobs/"+b.Desc.Digest.String(), nil)
	if err != nil {
		return err
	}
	if r.do(head, http.StatusOK, "") == nil {
		return nil // already there
	}

	// Two-step monolithic upload: POST opens a session, PUT sends the
	// bytes and the digest the registry verifies them against.
	start, err := r.request(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil)
	if err != nil {
		return err
	}
	resp, err := r.client.Do(start)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload: %s", resp.Status)
	}
	loc, err := resp.Location()
	if err != nil {
		return fmt.Errorf("start upload: %w", err)
	}
	q := loc.Query()
	q.Set("digest", b.Desc.Digest.String())
	loc.RawQuery = q.Encode()

	put, err := r.request(ctx, http.MethodPut, "", bytes.NewReader(b.Data))
	if err != nil {
		return err
	}
	put.URL = loc
	put.Header.Set("Content-Type", "application/octet-stream")
	return r.do(put, http.StatusCreated, "upload")
}

// writeRawBlob stores data under dgst, bypassing the registry's digest
// check, using distribution's storage layout (registry/storage/paths.go,
// stable since the v2 layout): the content under
// blobs/<alg>/<2 hex>/<hex>/data and the repository's link to it under
// repositories/<repo>/_layers/<alg>/<hex>/link.
func (r *Registry) writeRawBlob(ctx context.Context, repo string, dgst digest.Digest, data []byte) error {
	if err := dgst.Validate(); err != nil {
		return err
	}
	alg, hex := dgst.Algorithm().String(), dgst.Encoded()
	blob := path.Join("/docker/registry/v2/blobs", alg, hex[:2], hex, "data")
	link := path.Join("/docker/registry/v2/repositories", repo, "_layers", alg, hex, "link")
	if err := r.driver.PutContent(ctx, blob, data); err != nil {
		return err
	}
	return r.driver.PutContent(ctx, link, []byte(dgst.String()))
}

func (r *Registry) request(ctx context.Context, method, p string, body io.Reader) (*http.Request, error) {
	u := &url.URL{Scheme: "http", Host: r.Host(), Path: p}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if r.opts.Username != "" {
		req.SetBasicAuth(r.opts.Username, r.opts.Password)
	}
	return req, nil
}

// do sends req and wants status; what describes the call in errors.
func (r *Registry) do(req *http.Request, status int, what string) error {
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != status {
		return fmt.Errorf("%s: %s: %s", what, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}
